"""Per-process CPU accounting (accounting.py) and job control where the compatibility table
cannot reach: several vCPUs, threads, saved states. tests/compat has the rest (procs rusage,
rusage_tree, stop_*; procfs stat_times; signals pollmask, stop_waits)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, Run, make_root

from node_agent.runtime import accounting
from node_agent.runtime.console import BufferConsole
from node_agent.runtime.machine import Machine
from node_agent.runtime.spec import PartitionSpec

ARCHES = ["x86_64", "i386"]


@pytest.mark.parametrize("arch", ARCHES)
def test_a_busy_child_is_charged_while_it_runs_and_when_killed(
        run_guest: Callable[..., Run], arch: str) -> None:
    """The child never makes a syscall: /proc and its parent's wait4 see its time only
    because running slices are charged on demand (the parent reads the child's vCPU clock)."""
    run = run_guest("proc_acct", "kill_busy", arch=arch, vcpus=2)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "busy child's utime in /proc > 0: yes",
        "killed: 9; its rusage utime >= 100ms: yes",
    ]


@pytest.mark.parametrize("arch", ARCHES)
def test_syscalls_are_system_time_and_computing_user_time(run_guest: Callable[..., Run],
                                                          arch: str) -> None:
    run = run_guest("proc_acct", "split", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "syscall loop: stime > 0: yes",
        "compute loop: utime > 10 * stime: yes",
    ]


@pytest.mark.parametrize("vcpus", [1, 2])
def test_a_process_sums_its_threads_and_a_thread_has_its_own(run_guest: Callable[..., Run],
                                                               vcpus: int) -> None:
    run = run_guest("proc_acct", "threads", vcpus=vcpus)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "process utime >= 100ms: yes",
        "main thread's is its own: yes",
    ]


@pytest.mark.parametrize("arch", ARCHES)
def test_cpu_time_clocks_are_the_process_and_thread_times(run_guest: Callable[..., Run],
                                                          arch: str) -> None:
    run = run_guest("proc_acct", "clocks", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "process clock >= 100ms: yes; main thread's is its own: yes",
        "a child's time is not the parent's: yes",
        "clock() follows: yes",
    ]


def test_a_stopped_process_stops_all_its_threads(run_guest: Callable[..., Run]) -> None:
    run = run_guest("proc_acct", "stop_threads", vcpus=2)
    assert run.status.exit_code == 0, run.status
    lines = run.stdout.decode().splitlines()
    assert lines[:2] == ["stopped: yes by 19", "still stopped: yes"]
    # the reader (in the child) and the parent print concurrently once it is continued
    assert sorted(lines[2:4]) == ["continued: yes", "reader thread got 3 bytes"]
    assert lines[4:] == ["exited 5"]


def test_children_totals_survive_save_and_restore(guest: GuestBuilder, tmp_path: Path) -> None:
    root = make_root(tmp_path, guest("proc_acct"), "/bin/proc_acct")
    (tmp_path / "upper").mkdir()
    spec = PartitionSpec(name="acct", root=root, entrypoint="/bin/proc_acct", args=("save",),
                         env=(), vcpus=1, memory_bytes=64 << 20, upper=tmp_path / "upper",
                         cwd="/")
    state = tmp_path / "acct.state"
    console = BufferConsole(b"")
    machine = Machine(spec, console)

    def save_when_ready() -> None:
        deadline = time.monotonic() + 30
        while b"ready" not in bytes(console.stdout) and time.monotonic() < deadline:
            time.sleep(0.01)
        machine.pause()
        machine.save_state(state)
        machine.end_saved()

    threading.Thread(target=save_when_ready, daemon=True).start()
    first = machine.run()
    assert first.saved, first
    console2 = BufferConsole(b"")
    status = Machine.restore(spec, console2, state).run()
    assert status.exit_code == 0, status
    assert bytes(console2.stdout) == b"children utime kept: yes, times cutime > 0: yes\n"


def test_rusage_layouts() -> None:
    """struct rusage: 144 bytes on x86_64, 72 on i386; timevals truncate to microseconds."""
    wide = accounting.rusage(True, 1.5, 0.25, 4096)
    narrow = accounting.rusage(False, 1.5, 0.25, 4096)
    assert len(wide) == 144 and len(narrow) == 72
    assert wide[:40] == (1).to_bytes(8, "little") + (500000).to_bytes(8, "little") + \
        (0).to_bytes(8, "little") + (250000).to_bytes(8, "little") + \
        (4096).to_bytes(8, "little")
    assert narrow[:20] == b"".join(v.to_bytes(4, "little") for v in (1, 500000, 0, 250000, 4096))
