"""Syscalls a partition made, counted by number, in a file the agent reads at scrape time.

The worker maps ``syscalls.bin`` in the partition directory and each vCPU adds to its own
rows (one for x86_64, one for i386), so that counting needs no lock and costs one index and
one add on the syscall path. The agent sums the rows without asking the worker anything,
as it reads the console ring. Numbers below ``OTHER`` have a slot each; every other number
(the guest picks them) shares slot ``OTHER``. The counts start at zero with each worker
(a restart or restore is a counter reset, which Prometheus handles).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

__all__ = ["SLOTS", "OTHER", "ARCHES", "SYSCALLS_FILE", "SyscallCounts", "read_counts"]

SLOTS = 512
OTHER = SLOTS - 1
ARCHES = ("x86_64", "i386")
#: up to this many vCPUs get rows of their own (a partition has at most 4)
MAX_VCPUS = 4
SYSCALLS_FILE = "syscalls.bin"
_ROW = SLOTS * 8
_SIZE = MAX_VCPUS * len(ARCHES) * _ROW


class SyscallCounts:
    """The counters of one partition: in a shared file, or in memory when nobody reads."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            self._buf: mmap.mmap | bytearray = bytearray(_SIZE)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, _SIZE)
                self._buf = mmap.mmap(fd, _SIZE)
            finally:
                os.close(fd)
        self._view = memoryview(self._buf).cast("Q")

    def row(self, vcpu: int) -> memoryview:
        """vCPU ``vcpu``'s counters: slots [0, SLOTS) for x86_64, [SLOTS, 2*SLOTS) i386."""
        base = (vcpu % MAX_VCPUS) * len(ARCHES) * SLOTS
        return self._view[base:base + len(ARCHES) * SLOTS]


def read_counts(path: Path) -> dict[tuple[str, int], int]:
    """Non-zero totals by (arch, number) from a partition's file; {} if it has none.

    The file is the worker's, so it is read as untrusted bytes: whatever its size, only
    whole counters of the expected layout are read."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_SIZE)
    except OSError:
        return {}
    words = memoryview(raw[:len(raw) - len(raw) % 8]).cast("Q")
    totals: dict[tuple[str, int], int] = {}
    for i, value in enumerate(words):
        if value:
            arch = ARCHES[(i // SLOTS) % len(ARCHES)]
            key = (arch, i % SLOTS)
            totals[key] = totals.get(key, 0) + value
    return totals
