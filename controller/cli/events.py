"""`viridian events`: what happened and why, optionally watched."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence

import click
from viridian.v1 import controller_pb2, types_pb2

from controller.cli.app import get_client
from controller.cli.client import paged
from controller.cli.output import Column, age, dump, message_data, print_list
from controller.cli.params import output_option
from controller.cli.watch import ended_by_ctrl_c, follow

__all__ = ["COMMANDS", "EVENT_COLUMNS", "watch_line"]

E = types_pb2.Event
AUDIT = "Audit"  # the kind of audit records (controller.security.audit)

EVENT_COLUMNS: list[Column[E]] = [
    Column("AGE", lambda e: age(e.time)),
    Column("TYPE", lambda e: e.type or "-"),
    Column("REASON", lambda e: e.reason or "-"),
    Column("OBJECT", lambda e: f"{e.kind.lower()}/{e.object}" if e.kind else e.object),
    Column("MESSAGE", lambda e: e.message),
    Column("SOURCE", lambda e: e.source or "-", wide=True),
]

# Watched events arrive one at a time, so their table has fixed widths instead of measured ones.
_WIDTHS = {"AGE": 6, "TYPE": 8, "REASON": 22, "OBJECT": 28, "SOURCE": 18}


def watch_line(cells: Sequence[tuple[str, str]]) -> str:
    parts = [text.ljust(_WIDTHS.get(header, 0)) for header, text in cells]
    return "   ".join(parts).rstrip()


def _print(event: E, output: str, shown: Sequence[Column[E]]) -> None:
    if output == "json":
        click.echo(json.dumps(message_data(event)))
    elif output == "yaml":
        click.echo("---\n" + dump(message_data(event), "yaml"))
    else:
        click.echo(watch_line([(c.header, c.value(event)) for c in shown]))


@click.command("events")
@click.option("--object", "obj", default="", help="Only events about this object.")
@click.option("--limit", type=click.IntRange(min=0), default=0,
              help="Only the newest N (0 = all kept).")
@click.option("-w", "--watch", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--audit", is_flag=True,
              help="The audit trail instead: who changed what, from where (kind Audit).")
@output_option
@click.pass_context
def events_cmd(ctx: click.Context, obj: str, limit: int, watch: bool, audit: bool,
               output: str) -> None:
    """List recent events (oldest first); the audit trail is apart, under --audit."""
    stub = get_client(ctx).stub

    def wanted(event: E) -> bool:
        return (event.kind == AUDIT) == audit

    kept = paged(lambda token: stub.ListEvents(controller_pb2.ListEventsRequest(
        object=obj, page_token=token)), lambda reply: reply.events)
    events: Iterable[E] = (e for e in kept if wanted(e))
    if limit:
        events = deque(events, maxlen=limit)  # the newest N of the kind asked for
    if not watch:
        print_list(events, EVENT_COLUMNS, output, click.echo)
        return
    with ended_by_ctrl_c(ctx):
        # Watch: the kept events first, then new ones; JSON is an object a line, YAML documents.
        shown = [c for c in EVENT_COLUMNS if output == "wide" or not c.wide]
        if output in ("table", "wide"):
            click.echo(watch_line([(c.header, c.header) for c in shown]))
        seen = set()
        for event in events:
            seen.add(event.id)
            _print(event, output, shown)
        call = stub.WatchEvents(controller_pb2.ListEventsRequest(object=obj))

        def handle(event: E) -> None:
            if (event.id and event.id in seen) or not wanted(event):
                return
            seen.add(event.id)
            _print(event, output, shown)

        follow(ctx, call, handle)


COMMANDS = [events_cmd]
