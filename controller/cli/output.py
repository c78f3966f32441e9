"""The one shared formatter: tables, key/value views, JSON and YAML.

Commands describe what to show with `Column`s; `render_list`/`render_item` turn objects into
text for the chosen `-o` format. JSON/YAML print the API objects themselves, with proto field
names and enum names, so scripts see exactly what the API returns.

Nothing from the API reaches the terminal raw: text in etcd may come from an agent or an
older controller, and an escape sequence in it could rewrite the operator's screen. Every
column value, table cell and label has its control characters shown as escapes
(controller/safe_text.py; the gateway already cleans agents' text where it enters, this is
the second line). Tables keep one line per cell; key/value views keep the newlines their
fields put between items. JSON and YAML escape control characters themselves.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Generic, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.cells import cell_len
from viridian.v1 import types_pb2

from controller.cli.colour import enabled as colour_enabled
from controller.cli.colour import paint_table
from controller.safe_text import escape_controls

__all__ = [
    "FORMATS",
    "Column",
    "age",
    "arch_name",
    "dump",
    "enum_name",
    "labels_text",
    "message_data",
    "node_state_name",
    "phase_name",
    "print_list",
    "render_item",
    "render_list",
    "render_table",
    "terminal_text",
    "time_text",
    "timestamp",
]

FORMATS: tuple[str, ...] = ("table", "wide", "json", "yaml")
GUTTER = 3   # spaces between two columns of a table
T = TypeVar("T")


@dataclass(frozen=True)
class Column(Generic[T]):
    """One column of a table (or one line of a key/value view); `wide` ones only with -o wide."""

    header: str
    value: Callable[[T], str]
    wide: bool = False

    def __post_init__(self) -> None:
        # Every caller (tables, key/value views, `events --watch` lines) gets escaped text.
        raw = self.value

        def shown(item: T) -> str:
            return escape_controls(raw(item), multiline=True)

        object.__setattr__(self, "value", shown)


def terminal_text(text: str, *, multiline: bool = False) -> str:
    """Text from the API made safe to print: control characters shown as escapes (tab and
    newline kept when `multiline`)."""
    return escape_controls(text, multiline=multiline)


# ---- data formats ------------------------------------------------------------------------


def message_data(message: Message) -> dict[str, Any]:
    """The API object as plain data: proto field names, enum names, defaults included."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def dump(data: Any, fmt: str) -> str:
    """Plain data as "json" (indented) or "yaml"."""
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    raise ValueError(f"unknown data format {fmt!r}")


# ---- tables ------------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *,
                 min_widths: Sequence[int] = ()) -> str:
    """A borderless, left-aligned table in the style of kubectl/nomad: each column as wide
    as its widest cell (by terminal cells: wide characters count twice) and at least
    `min_widths` (how a table printed in chunks keeps its columns aligned), three spaces
    between columns, no trailing blanks.

    Padded here rather than laid out by rich's Table, which took 0.5 ms a row: a quarter
    of a second before the first screen of `viridian ls`."""
    lines = [[terminal_text(h) for h in headers]]
    lines += ([terminal_text(cell) for cell in row] for row in rows)
    sizes = [[cell_len(cell) for cell in line] for line in lines]
    widths = [max(min_widths[i] if i < len(min_widths) else 0, *(s[i] for s in sizes))
              for i in range(len(headers))]
    return "\n".join(
        "".join(cell + " " * (widths[i] - size[i] + GUTTER)
                for i, cell in enumerate(line)).rstrip()
        for line, size in zip(lines, sizes, strict=True))


def _visible(columns: Sequence[Column[T]], fmt: str) -> list[Column[T]]:
    return [c for c in columns if fmt == "wide" or not c.wide]


def render_list(
    items: Sequence[T],
    columns: Sequence[Column[T]],
    fmt: str,
    *,
    data: Callable[[T], Any] | None = None,
) -> str:
    """Items as a table (table/wide) or as a JSON/YAML list of API objects."""
    if fmt in ("json", "yaml"):
        to_data = data or _default_data
        return dump([to_data(item) for item in items], fmt)
    shown = _visible(columns, fmt)
    return render_table([c.header for c in shown], ([c.value(i) for c in shown] for i in items))


def print_list(
    items: Iterable[T],
    columns: Sequence[Column[T]],
    fmt: str,
    echo: Callable[..., None],
    *,
    data: Callable[[T], Any] | None = None,
) -> None:
    """render_list for a list that arrives in pages: JSON and YAML print each item as it
    comes (the same text render_list makes of the whole list); a table prints in chunks of
    TABLE_CHUNK rows as they arrive, as kubectl does, its columns as wide as the widest cell
    so far (they only widen), so the first screen of a long list shows at once."""
    if fmt not in ("json", "yaml"):
        _print_table_chunks(iter(items), _visible(columns, fmt), echo)
        return
    to_data = data or _default_data
    first = True
    for item in items:
        if fmt == "json":
            text = textwrap.indent(json.dumps(to_data(item), indent=2), "  ")
            echo(("[\n" if first else ",\n") + text, nl=False)
        else:
            echo(yaml.safe_dump([to_data(item)], sort_keys=False, default_flow_style=False),
                 nl=False)
        first = False
    if first:
        echo("[]")
    elif fmt == "json":
        echo("\n]")


#: rows of a table printed at a time (print_list)
TABLE_CHUNK = 500


def _print_table_chunks(items: Iterator[T], shown: Sequence[Column[T]],
                        echo: Callable[..., None]) -> None:
    headers = [c.header for c in shown]
    widths = [cell_len(terminal_text(h)) for h in headers]
    paint = colour_enabled(sys.stdout)
    first = True
    while True:
        chunk = list(islice(items, TABLE_CHUNK))
        if not chunk and not first:
            return
        rows = [[c.value(item) for c in shown] for item in chunk]
        for row in rows:
            widths = [max(w, cell_len(terminal_text(cell))) for w, cell in zip(widths, row,
                                                                               strict=True)]
        text = render_table(headers, rows, min_widths=widths)
        if paint:
            text = paint_table(text)   # it finds the status columns by the header
        echo(text if first else text.split("\n", 1)[1])
        if not chunk:
            return
        first = False


def render_item(
    item: T,
    fields: Sequence[Column[T]],
    fmt: str,
    *,
    data: Callable[[T], Any] | None = None,
) -> str:
    """One object as a key/value view (table/wide) or as a JSON/YAML API object."""
    if fmt in ("json", "yaml"):
        return dump((data or _default_data)(item), fmt)
    lines = []
    shown = _visible(fields, fmt)
    width = max((len(f.header) for f in shown), default=0) + 2
    for f in shown:
        value = terminal_text(f.value(item), multiline=True)
        pad = " " * width
        value = value.replace("\n", "\n" + pad)
        lines.append(f"{(f.header + ':').ljust(width)}{value}".rstrip())
    return "\n".join(lines)


def _default_data(item: Any) -> Any:
    if isinstance(item, Message):
        return message_data(item)
    return item


# ---- pretty values -----------------------------------------------------------------------


def enum_name(full_name: str, prefix: str) -> str:
    """"PARTITION_PHASE_NOT_READY" with prefix "PARTITION_PHASE_" -> "NotReady"."""
    short = full_name.removeprefix(prefix)
    return "".join(part.capitalize() for part in short.split("_"))


def phase_name(status: types_pb2.PartitionStatus) -> str:
    """Running, Pending, Off(0), …: the phase as people read it."""
    name = types_pb2.PartitionPhase.Name(status.phase)
    if status.phase == types_pb2.PARTITION_PHASE_UNSPECIFIED:
        return "Unknown"
    text = enum_name(name, "PARTITION_PHASE_")
    if status.phase == types_pb2.PARTITION_PHASE_OFF and status.has_exit_code:
        text += f"({status.exit_code})"
    return text


def node_state_name(node: types_pb2.Node) -> str:
    if node.status.state == types_pb2.NODE_STATE_UNSPECIFIED:
        return "Unknown"
    return enum_name(types_pb2.NodeState.Name(node.status.state), "NODE_STATE_")


def arch_name(arch: int) -> str:
    if arch == types_pb2.ARCH_UNSPECIFIED:
        return "-"
    return types_pb2.Arch.Name(arch).removeprefix("ARCH_").lower()  # type: ignore[arg-type]


def labels_text(labels: Mapping[str, str], sep: str = ",") -> str:
    """K=V pairs, each on one line whatever it holds (env values may hold newlines)."""
    return sep.join(f"{terminal_text(k)}={terminal_text(v)}"
                    for k, v in sorted(labels.items())) or "-"


def timestamp(ts: Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def age(ts: Timestamp, now: datetime | None = None) -> str:
    """Time since `ts` like kubectl: 45s, 12m, 3h, 5d ("-" if unset)."""
    when = timestamp(ts)
    if when is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    if seconds < 0:
        seconds = 0
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 120 * 60:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def time_text(ts: Timestamp) -> str:
    when = timestamp(ts)
    return "-" if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")
