"""The console's times and its history across save and restore; what an agent measures of a
running worker. Real workers running real guests (tests/guests), real /proc."""

from __future__ import annotations

import asyncio
import math
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from viridian.v1 import agent_pb2 as apb

from node_agent.consoles import since_start, start_offset, stream_console, tail_start
from node_agent.runtime.spec import PartitionSpec
from node_agent.runtime.worker_console import (
    MAX_MARKS,
    ConsoleRing,
    read_marks,
    read_ring,
)
from node_agent.runtime.workers import WorkerHandle, WorkerManager
from node_agent.usage import UsageMeter, read_proc

GUESTS = Path(__file__).resolve().parents[2] / "guests"
DEADLINE = 30.0


def wait_for(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the ring's marks and history (no worker) ---------------------------------------------

def test_marks_say_when_each_part_was_written(tmp_path: Path) -> None:
    clock = Clock()
    ring = ConsoleRing(tmp_path / "console.log", capacity=64, clock=clock)
    ring.append(b"one\n")
    clock.t += 5
    ring.append(b"two\n")
    ring.append(b"three\n")        # within MARK_EVERY_S of the last: no new mark
    clock.t += 5
    ring.append(b"four\n")
    marks = read_marks(tmp_path / "console.log")
    assert marks == [(1_000_000.0, 0), (1_000_005.0, 4), (1_000_010.0, 14)]
    assert read_marks(tmp_path / "console.log", 6, 14) == [(1_000_005.0, 4)]
    assert since_start(marks, 1_000_004.0, ring.end) == 4
    assert since_start(marks, 1_000_011.0, ring.end) == ring.end
    ring.close()


def test_marks_stay_bounded_and_cover_what_the_ring_holds(tmp_path: Path) -> None:
    clock = Clock()
    ring = ConsoleRing(tmp_path / "console.log", capacity=4096, clock=clock)
    for i in range(3 * MAX_MARKS):
        clock.t += 1
        ring.append(b"%d\n" % i)
    marks = read_marks(tmp_path / "console.log")
    assert len(marks) <= MAX_MARKS
    data, end = read_ring(tmp_path / "console.log", 0)
    covering = read_marks(tmp_path / "console.log", end - len(data), end)
    assert covering[0][1] <= end - len(data) < covering[1][1]
    assert (tmp_path / "console.times").stat().st_size == 16 * len(marks)
    ring.close()


def test_history_seeds_a_new_ring_with_the_same_offsets_and_times(tmp_path: Path) -> None:
    clock = Clock()
    old = ConsoleRing(tmp_path / "a.log", capacity=32, clock=clock)
    old.append(b"x" * 40)            # wrapped: only the last 32 bytes are kept
    clock.t += 3
    old.append(b"tail\n")
    blob = old.history()
    old.close()
    (tmp_path / "b").mkdir()
    new = ConsoleRing(tmp_path / "b" / "console.log", capacity=32, clock=clock)
    new.seed(blob)
    assert new.end == 45
    assert read_ring(tmp_path / "b" / "console.log", 0) == (b"x" * 27 + b"tail\n", 45)
    clock.t += 3
    new.append(b"after\n")
    assert read_ring(tmp_path / "b" / "console.log", 45) == (b"after\n", 51)
    assert [o for _, o in read_marks(tmp_path / "b" / "console.log")] == [0, 40, 45]
    new.close()


@pytest.mark.parametrize("blob", [
    b"", b"\x00" * 5,
    struct.pack("<QQI", 10, 20, 0) + b"x" * 20,          # more data than was ever written
    struct.pack("<QQI", 10, 5, 0) + b"x" * 4,            # shorter than it says
    struct.pack("<QQI", 1 << 63, 1, 0) + b"x",           # absurd end
    struct.pack("<QQI", 10, 2, 1000) + b"x" * 2,         # marks that are not there
])
def test_a_malformed_history_is_refused(tmp_path: Path, blob: bytes) -> None:
    ring = ConsoleRing(tmp_path / "console.log", capacity=32)
    with pytest.raises(ValueError):
        ring.seed(blob)
    assert ring.end == 0
    ring.close()


def test_hostile_marks_in_a_history_are_dropped(tmp_path: Path) -> None:
    marks = (struct.pack("<dQ", math.nan, 0) + struct.pack("<dQ", 5.0, 2)
             + struct.pack("<dQ", 6.0, 1) + struct.pack("<dQ", 7.0, 99))
    blob = struct.pack("<QQI", 4, 4, 4) + marks + b"abc\n"
    ring = ConsoleRing(tmp_path / "console.log", capacity=32)
    ring.seed(blob)
    assert read_marks(tmp_path / "console.log") == [(5.0, 2)]
    ring.close()


def test_tail_start_counts_lines_from_the_end() -> None:
    data = b"a\nbb\nccc\n"
    assert tail_start(data, 100, 1) == 100 - 4
    assert tail_start(data, 100, 2) == 100 - 7
    assert tail_start(data, 100, 9) == 100 - 9
    assert tail_start(b"a\nunfinished", 12, 1) == 2


# -- real workers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build guests")
    root = tmp_path_factory.mktemp("history-guests")
    for name in ("demo_ticker", "compute"):
        subprocess.run(["gcc", "-O1", "-static", "-o", str(root / name),
                        str(GUESTS / f"{name}.c")], check=True)
    return root


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[tuple[WorkerManager, WorkerManager]]:
    """Two nodes' worker managers (separate run dirs)."""
    a, b = WorkerManager(tmp_path / "a"), WorkerManager(tmp_path / "b")
    yield a, b
    for mgr in (a, b):
        for handle in mgr.adopt():
            if handle.poll() is None:
                handle.stop()
        mgr.close()


def _spec(root: Path, guest: str, *args: str) -> PartitionSpec:
    return PartitionSpec(name="p", root=root, entrypoint=f"/{guest}", args=args)


def _console(handle: WorkerHandle) -> bytes:
    return handle.read_console(0)[0]


def test_console_survives_save_and_restore_on_another_node(
        guests: Path, managers: tuple[WorkerManager, WorkerManager], tmp_path: Path) -> None:
    a, b = managers
    first = a.launch(_spec(guests, "demo_ticker", "100000", "20"), epoch=1)
    wait_for(lambda: b"tick 3 of" in _console(first), "three ticks before the save")
    state = tmp_path / "state"
    first.save(state)
    assert first.wait(DEADLINE) is not None
    before, end_before = first.read_console(0)
    a.forget("p")

    second = b.launch(_spec(guests, "demo_ticker", "100000", "20"), epoch=2, restore=state)
    wait_for(lambda: second.read_console(0)[1] > end_before + 40, "ticks after the restore")
    after, _ = second.read_console(0)
    assert after.startswith(before)                     # same bytes at the same offsets
    last = int(before.rsplit(b"tick ", 1)[1].split()[0])
    assert b"tick %d of" % (last + 1) in after[len(before):]   # the guest carried on
    marks = second.console_marks(0, len(after))
    assert marks[0][1] == 0 and marks[-1][1] >= end_before
    assert all(m[0] <= time.time() for m in marks)
    second.stop()
    data, end = second.read_console(0)
    assert data[start_offset(second, apb.ConsoleRequest(name="p", tail_lines=2))[0]:] == \
        b"".join(data.splitlines(keepends=True)[-2:])
    assert start_offset(second, apb.ConsoleRequest(name="p", since=time.time() + 60)) == \
        (end, end)
    assert start_offset(second, apb.ConsoleRequest(name="p", since=1.0)) == (0, end)

    sent: list[apb.AgentMessage] = []
    asyncio.run(stream_console(apb.ConsoleRequest(request_id="r", name="p", tail_lines=1),
                               lambda _name: (second, False, True), sent.append))
    first, last = sent[0].console, sent[-1].console
    assert first.data == data.splitlines(keepends=True)[-1] and last.eof
    assert first.offset == end - len(first.data)
    assert first.marks and first.marks[0].offset == first.offset
    assert abs(first.marks[0].time - time.time()) < 120


class _GrowingConsole:
    """A console that gains a line each time it is read (a guest printing all along)."""

    def __init__(self) -> None:
        self.data = b"1\n2\n3\n"

    def read_console(self, offset: int) -> tuple[bytes, int]:
        data = self.data
        self.data += b"%d\n" % (len(self.data.splitlines()) + 1)
        return data[offset:], len(data)

    def console_marks(self, start: int, stop: int) -> list[tuple[float, int]]:
        return []


def test_a_tail_snapshot_of_a_running_guest_is_exactly_its_lines() -> None:
    """`logs --tail 2` of a guest still printing gave the 2 lines and whatever the guest
    printed between finding them and sending them (one full-suite run: 3 lines)."""
    console = _GrowingConsole()
    sent: list[apb.AgentMessage] = []
    asyncio.run(stream_console(apb.ConsoleRequest(request_id="r", name="p", tail_lines=2),
                               lambda _name: (console, True, True),  # type: ignore[arg-type, return-value]
                               sent.append))
    assert b"".join(m.console.data for m in sent) == b"2\n3\n"
    assert sent[-1].console.eof and sent[-1].console.offset == 6


def test_usage_of_a_busy_worker(guests: Path,
                                managers: tuple[WorkerManager, WorkerManager]) -> None:
    a, _ = managers
    handle = a.launch(_spec(guests, "compute", "100000000000"), epoch=7)
    meter = UsageMeter()
    wait_for(lambda: (s := read_proc(handle.pid)) is not None and s.cpu_seconds > 0.3,
             "CPU time of the compute-bound guest")
    report = meter.measure([("p", 7, handle.pid)])
    wait_for(lambda: (s := read_proc(handle.pid)) is not None
             and s.cpu_seconds > report.partitions[0].cpu_seconds + 0.2, "more CPU time")
    again = meter.measure([("p", 7, handle.pid)]).partitions[0]
    assert again.name == "p" and again.epoch == 7
    assert again.cpu_seconds > report.partitions[0].cpu_seconds
    assert again.cpu_cores > 0.0
    assert again.resident_bytes > 1 << 20
    assert again.uptime_seconds > 0.0
    handle.stop()
    wait_for(lambda: read_proc(handle.pid) is None, "the worker to be gone")
    assert list(meter.measure([("p", 7, handle.pid)]).partitions) == []


def test_a_read_while_the_ring_is_still_filling_sees_the_bytes_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that opened the ring just before the writer appended must not map offsets
    with a capacity taken from a file still growing: `logs --tail 2` once got one line
    because the snapshot came back rotated (the newest bytes read from the ring's start)."""
    from node_agent.runtime import worker_console

    path = tmp_path / "console.log"
    ring = ConsoleRing(path, capacity=4096)
    ring.append(b"0\n1\n2\n")
    real = worker_console._read_end
    calls = 0

    def append_then_read(fd: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # between the reader's open/fstat and its header read
            ring.append(b"3\n")
        return real(fd)

    monkeypatch.setattr(worker_console, "_read_end", append_then_read)
    data, end = read_ring(path, 0)
    assert (data, end) == (b"0\n1\n2\n3\n", 8)
    ring.close()
