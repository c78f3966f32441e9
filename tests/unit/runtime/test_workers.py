"""Worker processes with the real Machine and real guests (tests/guests/worker_*.c)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.runtime.spec import PartitionSpec
from node_agent.runtime.worker_console import ConsoleRing, WorkerConsole, read_ring
from node_agent.runtime.workers import WorkerError, WorkerHandle, WorkerManager

GUESTS = Path(__file__).resolve().parents[2] / "guests"
DEADLINE = 20.0

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build guests")


@pytest.fixture(scope="session")
def guest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker_*.c guests, compiled static once per session, as a partition root."""
    root = tmp_path_factory.mktemp("guest-root")
    for name in ("worker_hello", "worker_stdin"):
        subprocess.run(["gcc", "-O1", "-static", "-o", str(root / name),
                        str(GUESTS / f"{name}.c")], check=True)
    return root


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[WorkerManager]:
    mgr = WorkerManager(tmp_path / "run")
    yield mgr
    for handle in mgr.adopt():  # leave no worker behind
        if handle.poll() is None:
            handle.stop(grace_s=2.0)
    mgr.close()


def spec(root: Path, name: str, guest: str, *args: str) -> PartitionSpec:
    return PartitionSpec(name=name, root=root, entrypoint=f"/{guest}", args=args)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def console_has(handle: WorkerHandle, text: bytes) -> Callable[[], bool]:
    return lambda: text in handle.read_console(0)[0]


def test_exit_code_and_console_by_offset(manager: WorkerManager, guest_root: Path) -> None:
    handle = manager.launch(spec(guest_root, "hello", "worker_hello", "alpha"), epoch=7)
    assert (handle.name, handle.epoch) == ("hello", 7)
    status = handle.wait(DEADLINE)
    assert status is not None
    assert (status.exit_code, status.failed_reason) == (3, None)
    data, end = handle.read_console(0)
    assert data == b"hello from alpha\nto stderr\n"
    assert end == len(data)
    assert handle.read_console(6) == (data[6:], end)
    assert handle.read_console(end) == (b"", end)
    assert manager.get("hello") is handle


def test_stdin_is_delivered_then_eof(manager: WorkerManager, guest_root: Path) -> None:
    handle = manager.launch(spec(guest_root, "cat", "worker_stdin"), 1, stdin=True)
    wait_for(console_has(handle, b"ready\n"), "the guest to start")
    assert handle.poll() is None
    handle.write_stdin(b"abc")
    wait_for(console_has(handle, b"ready\nabc"), "the echo")
    handle.close_stdin()
    status = handle.wait(DEADLINE)
    assert status is not None and status.exit_code == 3


def test_without_stdin_the_guest_sees_eof(manager: WorkerManager, guest_root: Path) -> None:
    handle = manager.launch(spec(guest_root, "nostdin", "worker_stdin"), 1)
    status = handle.wait(DEADLINE)
    assert status is not None and status.exit_code == 0
    with pytest.raises(WorkerError):
        handle.write_stdin(b"x")


def test_stop_halts_a_blocked_guest(manager: WorkerManager, guest_root: Path) -> None:
    handle = manager.launch(spec(guest_root, "blocked", "worker_stdin"), 1, stdin=True)
    wait_for(console_has(handle, b"ready\n"), "the guest to start")
    started = time.monotonic()
    handle.stop(grace_s=5.0)
    status = handle.poll()
    assert status is not None
    assert (status.exit_code, status.failed_reason) == (143, None)
    assert time.monotonic() - started < 4.0, "stopped through the control socket, not killed"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_killed_worker_reports_the_signal(manager: WorkerManager, guest_root: Path,
                                          sig: signal.Signals) -> None:
    handle = manager.launch(spec(guest_root, "victim", "worker_stdin"), 1, stdin=True)
    wait_for(console_has(handle, b"ready\n"), "the guest to start")
    os.kill(handle.pid, sig)
    status = handle.wait(DEADLINE)
    assert status is not None
    assert status.exit_code is None
    assert status.failed_reason == f"worker died: signal {int(sig)} ({sig.name})"


def test_name_in_use_is_refused_until_it_ends(manager: WorkerManager, guest_root: Path) -> None:
    running = spec(guest_root, "dup", "worker_stdin")
    handle = manager.launch(running, 1, stdin=True)
    with pytest.raises(WorkerError, match="already running"):
        manager.launch(running, 2)
    with pytest.raises(WorkerError, match="still running"):
        manager.forget("dup")
    handle.close_stdin()
    assert handle.wait(DEADLINE) is not None
    again = manager.launch(spec(guest_root, "dup", "worker_hello"), 2)
    assert again.epoch == 2
    assert again.wait(DEADLINE) is not None


def test_bad_image_fails_the_partition(manager: WorkerManager, guest_root: Path) -> None:
    handle = manager.launch(spec(guest_root, "bad", "no_such_binary"), 1)
    status = handle.wait(DEADLINE)
    assert status is not None and status.exit_code is None
    assert status.failed_reason and "no_such_binary" in status.failed_reason


def test_new_manager_adopts_running_worker(tmp_path: Path, guest_root: Path) -> None:
    run_dir = tmp_path / "run"
    first = WorkerManager(run_dir)
    handle = first.launch(spec(guest_root, "survivor", "worker_stdin"), 5, stdin=True)
    wait_for(console_has(handle, b"ready\n"), "the guest to start")
    first.close()  # the agent goes away: fork server stops, the worker does not

    second = WorkerManager(run_dir)
    try:
        adopted = second.adopt()
        assert [(h.name, h.pid, h.epoch) for h in adopted] == [("survivor", handle.pid, 5)]
        again = second.get("survivor")
        assert again is not None and again.poll() is None
        again.write_stdin(b"xy")
        again.close_stdin()
        status = again.wait(DEADLINE)
        assert status is not None and status.exit_code == 2
        assert again.read_console(0)[0] == b"ready\nxy"
        # A third manager still sees the uncollected status, until it is forgotten.
        assert [h.name for h in WorkerManager(run_dir).adopt()] == ["survivor"]
        second.forget("survivor")
        assert second.adopt() == [] and second.get("survivor") is None
    finally:
        for h in second.adopt():
            h.stop(grace_s=1.0)
        second.close()


def test_ring_wraps_and_clamps_offsets(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    ring = ConsoleRing(path, capacity=16)
    ring.append(b"0123456789")
    assert read_ring(path, 0) == (b"0123456789", 10)
    ring.append(b"abcdefghij")  # 20 bytes written: the first 4 are gone
    assert read_ring(path, 0) == (b"456789abcdefghij", 20)
    assert read_ring(path, 12) == (b"cdefghij", 20)
    assert read_ring(path, 99) == (b"", 20)
    ring.append(b"x" * 40)  # larger than the ring: only its tail survives
    assert read_ring(path, 0) == (b"x" * 16, 60)
    ring.close()
    assert read_ring(tmp_path / "missing.log", 5) == (b"", 5)


def test_console_rate_limit_drops_with_markers(tmp_path: Path) -> None:
    now = [0.0]
    ring = ConsoleRing(tmp_path / "console.log", capacity=4096)
    console = WorkerConsole(ring, stdin=False, rate=100, burst=100, clock=lambda: now[0])
    console.write(1, b"a" * 80)
    console.write(1, b"b" * 80)  # over the burst: dropped
    console.write(1, b"c" * 30)  # still over what is left (20)
    now[0] = 1.0  # a second later the bucket is full again
    console.write(2, b"d" * 5)
    data = read_ring(tmp_path / "console.log", 0)[0]
    assert data.startswith(b"a" * 80 + b"\n[viridian: console rate limit exceeded")
    assert data.endswith(b"[viridian: 110 console bytes dropped]\nddddd")
    assert console.read_stdin(10) == b""
