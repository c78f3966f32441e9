"""Syscall table entries: each names the call, its support level and a note.

The per-architecture tables (x86_64.py, i386.py) are lists of entries; the vCPU dispatches
through ``dispatch(entries)`` and docs/syscalls.md is generated from the same lists
(tools/gen_syscall_docs.py), so the documentation cannot drift from what runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .common import E, Handler

__all__ = ["Entry", "SUPPORTED", "PARTIAL", "UNSUPPORTED", "ok", "partial", "unsupported",
           "dispatch"]

SUPPORTED, PARTIAL, UNSUPPORTED = "supported", "partial", "not supported"


@dataclass(frozen=True)
class Entry:
    nr: int
    name: str
    handler: Handler
    level: str
    note: str = ""


def _enosys(*_: object) -> int:
    return E.NOSYS


def ok(nr: int, name: str, handler: Handler, note: str = "") -> Entry:
    """A call that behaves as on Linux (``note`` says how, where it is not obvious)."""
    return Entry(nr, name, handler, SUPPORTED, note)


def partial(nr: int, name: str, handler: Handler, note: str) -> Entry:
    """A call that works for common uses; ``note`` says what differs from Linux."""
    return Entry(nr, name, handler, PARTIAL, note)


def unsupported(nr: int, name: str, note: str) -> Entry:
    """A call known and deliberately answered with ENOSYS (not counted as unknown)."""
    return Entry(nr, name, _enosys, UNSUPPORTED, note)


def dispatch(entries: Iterable[Entry]) -> dict[int, Handler]:
    """nr -> handler; a number listed twice is a bug in the table."""
    table: dict[int, Handler] = {}
    for entry in entries:
        if entry.nr in table:
            raise ValueError(f"syscall {entry.nr} ({entry.name}) is listed twice")
        table[entry.nr] = entry.handler
    return table
