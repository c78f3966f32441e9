"""Syscalls are counted by number into the worker's shared file, and the agent's metrics
name the most frequent (node_agent/runtime/syscall_counts.py, node_agent/metrics.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import Run

from node_agent.metrics import top_syscalls
from node_agent.runtime.syscall_counts import OTHER, SLOTS, SYSCALLS_FILE, SyscallCounts


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_a_guest_s_syscalls_are_counted_by_name(run_guest: Callable[..., Run],
                                                tmp_path: Path, arch: str) -> None:
    counts = SyscallCounts(tmp_path / SYSCALLS_FILE)
    run = run_guest("hello", "3", arch=arch, control=lambda m: m.count_syscalls(counts))
    assert run.status.exit_code == 3
    top = {name: n for a, name, n in top_syscalls(tmp_path, n=50) if a == arch}
    assert top["exit_group"] == 1
    assert top["readlink"] >= 1       # its own; glibc's start-up may make one more
    assert top["write"] == 2          # stderr unbuffered, then stdout at exit
    assert {a for a, _, _ in top_syscalls(tmp_path, n=50)} == {arch}


def test_rows_of_each_vcpu_are_summed_and_odd_numbers_named(tmp_path: Path) -> None:
    counts = SyscallCounts(tmp_path / SYSCALLS_FILE)
    counts.row(0)[39] += 5                  # x86_64 getpid on vCPU 0
    counts.row(3)[39] += 2                  # and on vCPU 3
    counts.row(1)[SLOTS + 20] += 4          # i386 getpid
    counts.row(2)[500] += 1                 # a number no table has
    counts.row(2)[OTHER] += 9               # numbers past the slots
    assert top_syscalls(tmp_path) == [("x86_64", "other", 9), ("x86_64", "getpid", 7),
                                       ("i386", "getpid", 4), ("x86_64", "nr_500", 1)]
    assert top_syscalls(tmp_path, n=2) == [("x86_64", "other", 9), ("x86_64", "getpid", 7)]


def test_a_hostile_or_missing_file_reads_as_what_it_holds(tmp_path: Path) -> None:
    assert top_syscalls(tmp_path) == []                       # no file
    (tmp_path / SYSCALLS_FILE).write_bytes(b"\x01\x02\x03")     # not one whole counter
    assert top_syscalls(tmp_path) == []
    # every counter of the layout at 1, then garbage past it (never read)
    (tmp_path / SYSCALLS_FILE).write_bytes(struct.pack("<Q", 1) * (8 * SLOTS)
                                           + b"\xff" * 100_000)
    top = top_syscalls(tmp_path, n=10_000)
    assert len(top) == 2 * SLOTS and all(n == 4 for _, _, n in top)   # 4 vCPU rows each
