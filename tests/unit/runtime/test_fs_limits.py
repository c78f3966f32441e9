"""Limits of the file syscalls: F_DUPFD bounds, path lengths, and the writable layer's quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, Run, make_root

from node_agent.runtime.console import BufferConsole
from node_agent.runtime.machine import Machine
from node_agent.runtime.spec import PartitionSpec
from node_agent.runtime.upper_quota import ENTRY_COST
from node_agent.runtime.workers import WorkerManager

ARCHES = ["x86_64", "i386"]


def _run(root: Path, entry: str, args: tuple[str, ...], upper: Path, disk: int) -> Run:
    spec = PartitionSpec(name="limits", root=root, entrypoint=entry, args=args,
                         memory_bytes=64 << 20, upper=upper, disk_bytes=disk)
    console = BufferConsole(b"")
    status = Machine(spec, console, lambda r, m: None).run()
    return Run(status, bytes(console.stdout), bytes(console.stderr))


def _failures(run: Run) -> list[str]:
    out = run.stdout.decode(errors="replace")
    assert "failures=" in out, (run.status, out, run.stderr[-400:])
    return [line for line in out.splitlines() if "FAIL" in line]


@pytest.mark.parametrize("arch", ARCHES)
def test_dupfd_bounds_and_path_lengths(guest: GuestBuilder, tmp_path: Path, arch: str) -> None:
    root = make_root(tmp_path, guest("fs_limits", arch), "/bin/fs_limits")
    upper = tmp_path / "upper"
    upper.mkdir()
    run = _run(root, "/bin/fs_limits", (), upper, 1 << 30)
    assert _failures(run) == []
    assert run.status.exit_code == 0
    assert not (upper / "tmp-link").exists()


@pytest.mark.parametrize("arch", ARCHES)
def test_writes_stop_at_the_quota(guest: GuestBuilder, tmp_path: Path, arch: str) -> None:
    disk = 1 << 20
    blob = os.urandom(600 << 10)
    root = make_root(tmp_path, guest("disk_fill", arch), "/bin/disk_fill", {"data/blob": blob})
    upper = tmp_path / "upper"
    upper.mkdir()
    run = _run(root, "/bin/disk_fill", ("/data/blob",), upper, disk)
    assert _failures(run) == []
    assert run.status.exit_code == 0
    out = run.stdout.decode()
    written = int(out.split("written=")[1].split()[0])
    # everything in the layer: /big is gone (unlinked), the copied-up blob and /again remain
    assert disk - 2 * ENTRY_COST - (64 << 10) < written <= disk - ENTRY_COST
    held = sum(p.stat().st_size for p in upper.rglob("*") if p.is_file())
    assert held <= disk
    assert (upper / "data/blob").read_bytes() == blob


def test_the_process_limit_crosses_into_a_worker_process(guest: GuestBuilder,
                                                         tmp_path: Path) -> None:
    """max_processes travels with the spec through the fork server to the worker."""
    root = make_root(tmp_path, guest("proc_tree", "x86_64"), "/bin/proc_tree")
    manager = WorkerManager(tmp_path / "run")
    try:
        handle = manager.launch(PartitionSpec(name="bomb", root=root, entrypoint="/bin/proc_tree",
                                              args=("bomb",), memory_bytes=64 << 20,
                                              max_processes=10), epoch=1)
        status = handle.wait(60.0)
        console = handle.read_console(0)[0].decode(errors="replace")
    finally:
        for left in manager.adopt():
            if left.poll() is None:
                left.stop(grace_s=2.0)
        manager.close()
    assert status is not None and status.exit_code == 0, (status, console[-400:])
    assert "bomb: made 9, then EAGAIN=1" in console


def test_the_quota_crosses_into_a_worker_process(guest: GuestBuilder, tmp_path: Path) -> None:
    """disk_bytes travels with the spec through the fork server to the worker's sandbox."""
    blob = os.urandom(600 << 10)
    root = make_root(tmp_path, guest("disk_fill", "x86_64"), "/bin/disk_fill", {"data/blob": blob})
    upper = tmp_path / "upper"
    upper.mkdir()
    manager = WorkerManager(tmp_path / "run")
    try:
        handle = manager.launch(PartitionSpec(name="fill", root=root, entrypoint="/bin/disk_fill",
                                              args=("/data/blob",), memory_bytes=64 << 20,
                                              upper=upper, disk_bytes=1 << 20), epoch=1)
        status = handle.wait(60.0)
        console = handle.read_console(0)[0].decode(errors="replace")
    finally:
        for left in manager.adopt():
            if left.poll() is None:
                left.stop(grace_s=2.0)
        manager.close()
    assert status is not None and status.exit_code == 0, (status, console[-400:])
    assert "failures=0" in console
