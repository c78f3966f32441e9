"""Colour for phases, node states and errors, only where a person reads it.

On when the stream is a terminal; off when it is piped or redirected, when NO_COLOR is set
to anything non-empty (https://no-color.org), or when TERM is "dumb". Tables are rendered
plain first (so their widths count only visible characters) and the status cells are then
painted in place, so coloured and plain output line up the same.
"""

from __future__ import annotations

import os
import re
from typing import IO, Any

import click

__all__ = ["enabled", "error_prefix", "paint_field", "paint_status", "paint_table",
           "status_columns"]

#: Columns whose words are painted, and the colour of each word.
STYLES: dict[str, dict[str, dict[str, Any]]] = {
    "PHASE": {
        "Running": {"fg": "green"},
        "Pending": {"fg": "yellow"}, "Scheduled": {"fg": "yellow"},
        "Starting": {"fg": "yellow"}, "Stopping": {"fg": "yellow"},
        "Saving": {"fg": "yellow"}, "Paused": {"fg": "cyan"}, "Saved": {"fg": "cyan"},
        "Failed": {"fg": "red", "bold": True}, "Lost": {"fg": "red", "bold": True},
        "Deleted": {"dim": True},
    },
    "STATE": {
        "Ready": {"fg": "green"}, "NotReady": {"fg": "red", "bold": True},
        "Deleted": {"dim": True},
    },
}
_WORD = re.compile(r"\S+")


def enabled(stream: IO[Any] | None) -> bool:
    """Whether to colour what goes to `stream`."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def status_columns(header: str) -> list[tuple[int, dict[str, dict[str, Any]]]]:
    """(offset, styles) of the painted columns in a table's header line."""
    out = []
    for name, styles in STYLES.items():
        found = re.search(rf"(?:^|\s){name}(?:\s|$)", header)
        if found:
            out.append((found.start() + (0 if found.group().startswith(name) else 1), styles))
    return out


def paint_status(line: str, columns: list[tuple[int, dict[str, dict[str, Any]]]]) -> str:
    """`line` with the word starting at each column's offset coloured (if it is known)."""
    for offset, styles in sorted(columns, reverse=True):  # right to left: offsets hold
        word = _WORD.match(line, offset)
        if word is None or word.start() != offset:
            continue
        style = styles.get(word.group().split("(", 1)[0])
        if style:
            line = line[:offset] + click.style(word.group(), **style) + line[word.end():]
    return line


def paint_table(text: str) -> str:
    """A rendered table (header first) with its status cells coloured."""
    lines = text.split("\n")
    columns = status_columns(lines[0]) if lines else []
    if not columns:
        return text
    return "\n".join([lines[0], *(paint_status(line, columns) for line in lines[1:])])


def paint_field(text: str, field: str, column: str) -> str:
    """A key/value view (`get`) with the value of `field` ("Phase") coloured as the table
    column `column` ("PHASE") would be."""
    prefix = field + ":"
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            offset = len(line) - len(line[len(prefix):].lstrip())
            lines[i] = paint_status(line, [(offset, STYLES[column])])
            break
    return "\n".join(lines)


def error_prefix(stream: IO[Any] | None) -> str:
    return click.style("error:", fg="red", bold=True) if enabled(stream) else "error:"
