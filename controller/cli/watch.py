"""`-w/--watch` for lists: the table first, then one line per change (as `kubectl get -w`).

The lines come from the controller's watch streams (WatchPartitions, WatchNodes), never from
polling. A line is printed only when what it shows changed (the AGE column aside, which
changes by itself). Tables keep the column widths of the table printed first; JSON prints
one object per line and YAML one document per change, each as {"type": ADDED | MODIFIED |
DELETED, "object": the API object} (the shape of `kubectl get -w --output-watch-events`).
Ctrl-C ends the watch quietly with exit status 0.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import click
import grpc
from google.protobuf.message import Message

from controller.cli.client import cancel
from controller.cli.colour import enabled as colour_enabled
from controller.cli.colour import paint_status, paint_table, status_columns
from controller.cli.output import Column, dump, message_data, render_table

__all__ = ["WatchPrinter", "follow"]

T = TypeVar("T")
E = TypeVar("E")
GAP = "   "  # the space render_table leaves between columns


class WatchPrinter(Generic[T]):
    """Prints the first table and then changed rows, aligned with it."""

    def __init__(self, columns: Sequence[Column[T]], fmt: str, *, key: Callable[[T], str],
                 status_header: str, echo: Callable[..., None] = click.echo) -> None:
        self.fmt = fmt
        self.columns = [c for c in columns if fmt == "wide" or not c.wide]
        self.key = key
        self.status_header = status_header
        self.echo = echo
        self.widths: list[int] = []
        self.shown: dict[str, Any] = {}  # key -> what its last line showed
        self.last: dict[str, T] = {}     # key -> the object as last seen
        self.colour = colour_enabled(sys.stdout)
        self.status: list[tuple[int, dict[str, dict[str, Any]]]] = []

    def _cells(self, item: T, deleted: bool = False) -> list[str]:
        return ["Deleted" if deleted and c.header == self.status_header else c.value(item)
                for c in self.columns]

    def _seen(self, item: T, deleted: bool) -> Any:
        if self.fmt in ("json", "yaml"):
            return (deleted, json.dumps(_data(item), sort_keys=True))
        return [cell for c, cell in zip(self.columns, self._cells(item, deleted), strict=True)
                if c.header != "AGE"]

    def start(self, items: Iterable[T]) -> None:
        """The listed objects: a table (widths measured over it), or ADDED records."""
        listed = list(items)
        for item in listed:
            k = self.key(item)
            self.last[k] = item
            self.shown[k] = self._seen(item, False)
        if self.fmt in ("json", "yaml"):
            for item in listed:
                self._record("ADDED", item)
            return
        rows = [self._cells(item) for item in listed]
        headers = [c.header for c in self.columns]
        self.widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
        text = render_table(headers, rows)
        self.status = status_columns(text.split("\n")[0])
        self.echo(paint_table(text) if self.colour else text)

    def put(self, item: T) -> None:
        k = self.key(item)
        seen = self._seen(item, False)
        if self.shown.get(k) == seen:
            self.last[k] = item
            return
        kind = "MODIFIED" if k in self.last else "ADDED"
        self.last[k] = item
        self.shown[k] = seen
        self._emit(kind, item, deleted=False)

    def showing(self, name: str) -> bool:
        return name in self.shown

    def forget(self, name: str) -> None:
        """Stop following `name` without a line (it left a filtered list)."""
        self.shown.pop(name, None)
        self.last.pop(name, None)

    def delete(self, name: str) -> None:
        item = self.last.pop(name, None)
        if self.shown.pop(name, None) is None or item is None:
            return  # never shown (filtered out, or gone before we listed)
        self._emit("DELETED", item, deleted=True)

    def _emit(self, kind: str, item: T, *, deleted: bool) -> None:
        if self.fmt in ("json", "yaml"):
            self._record(kind, item)
            return
        cells = self._cells(item, deleted)
        if not self.widths:
            self.widths = [len(c.header) for c in self.columns]
        line = GAP.join(cell.ljust(w) for cell, w in zip(cells, self.widths, strict=True))
        line = line.rstrip()
        self.echo(paint_status(line, self.status) if self.colour else line)

    def _record(self, kind: str, item: T) -> None:
        record = {"type": kind, "object": _data(item)}
        if self.fmt == "json":
            self.echo(json.dumps(record))
        else:
            self.echo("---\n" + dump(record, "yaml"))


def _data(item: Any) -> Any:
    return message_data(item) if isinstance(item, Message) else item


@contextmanager
def ended_by_ctrl_c(ctx: click.Context) -> Iterator[None]:
    """Ctrl-C anywhere in a watch (its list, the call's start, the stream) ends it with
    status 0: stopping a watch is how a watch ends."""
    try:
        yield
    except KeyboardInterrupt:
        ctx.exit(0)


def follow(ctx: click.Context, call: Iterable[E], handle: Callable[[E], None]) -> None:
    """Feed each message of a watch stream to handle() until the stream ends or Ctrl-C
    (exit 0: stopping a watch is how a watch ends)."""
    try:
        for message in call:
            handle(message)
    except KeyboardInterrupt:
        cancel(call)
        ctx.exit(0)
    except grpc.RpcError as err:
        if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.CANCELLED:
            ctx.exit(0)
        raise
