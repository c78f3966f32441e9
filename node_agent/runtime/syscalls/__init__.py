"""The syscall layer, split by domain (files, io, fds, memory, futex, time, signals, system,
processes), with one table of entries per architecture (x86_64.py, i386.py; see table.py).

Handlers see the calling guest through a Task (task.py), never the vCPU."""

from __future__ import annotations

from .common import Handler
from .table import Entry

__all__ = ["tables", "entries"]


def entries(arch: str) -> tuple[Entry, ...]:
    """Every table entry of ``arch`` ("x86_64" or "i386"), in number order."""
    if arch == "x86_64":
        from .x86_64 import ENTRIES
    else:
        from .i386 import ENTRIES
    return tuple(sorted(ENTRIES, key=lambda e: e.nr))


def tables(arch: str) -> dict[int, Handler]:
    """nr -> handler for ``arch``, what the vCPU dispatches through."""
    if arch == "x86_64":
        from .x86_64 import TABLE
    else:
        from .i386 import TABLE
    return TABLE
