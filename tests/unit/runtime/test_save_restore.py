"""Pause/resume, Saved state and checkpoints through real worker processes (issue 5).

A restore always happens in a NEW WorkerManager on another run dir with another upper dir
path, as on another node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.runtime.spec import PartitionSpec
from node_agent.runtime.state import StateReader
from node_agent.runtime.workers import WorkerHandle, WorkerManager

GUESTS = Path(__file__).resolve().parents[2] / "guests"
DEADLINE = 60.0
# Gated: the guest prints "computed", then waits for a byte on stdin before its final line,
# so a save that comes late still finds it running.
CHECKSUM_ARGS = ("100", "40000", "gate")
SPIN_N = "80000000"                       # ~2.5 s of emulation: outlasts 30 pauses
MIDWAY = rb"progress [1-4]\d%"          # saved somewhere between 10% and 50%

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build guests")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sr_*.c guests and fastpath.c (x86_64; sr_checksum and sr_pipeline also -m32) plus
    /input.txt and /data."""
    root = tmp_path_factory.mktemp("sr-root")
    for name in ("sr_counter", "sr_checksum", "sr_files", "sr_mem", "sr_pipeline", "sr_rights",
                 "sr_shared", "sr_poll", "fastpath"):
        subprocess.run(["gcc", "-O2", "-static", "-pthread", "-w", "-o", str(root / name),
                        str(GUESTS / f"{name}.c")], check=True)
    for name in ("sr_checksum", "sr_pipeline"):
        m32 = subprocess.run(["gcc", "-m32", "-O2", "-static", "-pthread", "-w", "-o",
                              str(root / f"{name}32"), str(GUESTS / f"{name}.c")],
                             capture_output=True)
        if m32.returncode != 0:
            (root / f"{name}32").unlink(missing_ok=True)
    (root / "input.txt").write_bytes(bytes((i * 37 + 11) % 251 for i in range(30000)))
    (root / "data").mkdir()
    return root


class Node:
    """One 'node': a WorkerManager on its own run dir, upper dirs under its own path."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mgr = WorkerManager(base / "run")

    def spec(self, root: Path, name: str, guest: str, *args: str, vcpus: int = 1,
             memory: int = 256 << 20) -> PartitionSpec:
        upper = self.base / "upper" / name
        upper.mkdir(parents=True, exist_ok=True)
        return PartitionSpec(name=name, root=root, entrypoint=f"/{guest}", args=args,
                             vcpus=vcpus, memory_bytes=memory, upper=upper)

    def close(self) -> None:
        for handle in self.mgr.adopt():
            if handle.poll() is None:
                handle.stop(grace_s=2.0)
        self.mgr.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], Node]]:
    made: list[Node] = []

    def make(name: str) -> Node:
        made.append(Node(tmp_path / name))
        return made[-1]

    yield make
    for node in made:
        node.close()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def console(handle: WorkerHandle) -> bytes:
    return handle.read_console(0)[0]


def finish(handle: WorkerHandle) -> bytes:
    status = handle.wait(DEADLINE)
    assert status is not None, "guest did not finish"
    assert (status.exit_code, status.failed_reason, status.saved) == (0, None, False), status
    return console(handle)


def final_line(out: bytes) -> bytes:
    return out.strip().splitlines()[-1]


def test_pause_freezes_output_and_resume_continues(nodes: Callable[[str], Node],
                                                   root: Path) -> None:
    node = nodes("a")
    handle = node.mgr.launch(node.spec(root, "count", "sr_counter", "150"), 1)
    wait_for(lambda: b"\n20\n" in console(handle), "the counter to run")
    handle.pause()
    frozen = console(handle)
    time.sleep(0.4)
    assert console(handle) == frozen, "console output progressed while paused"
    handle.resume()
    out = finish(handle)
    assert out == b"".join(f"{i}\n".encode() for i in range(150)) + b"done\n"


def _save_and_restore(nodes: Callable[[str], Node], root: Path, guest: str,
                      args: tuple[str, ...], ready: bytes, vcpus: int = 4) -> tuple[bytes, bytes]:
    """(uninterrupted output, console of the run saved on node a and restored on node b: it
    holds the output from before the save too);
    the save happens once the console matches the regex ``ready``. A gated guest (last
    argument "gate") gets its byte on stdin at once in the uninterrupted run and only after
    the restore in the other."""
    gated = args[-1:] == ("gate",)
    a, b = nodes("a"), nodes("b")
    ref = a.mgr.launch(a.spec(root, "ref", guest, *args, vcpus=vcpus), 1, stdin=gated)
    if gated:
        ref.write_stdin(b"g")   # waits in the guest's stdin until it reads it
    reference = finish(ref)
    handle = a.mgr.launch(a.spec(root, "part", guest, *args, vcpus=vcpus), 2, stdin=gated)
    wait_for(lambda: re.search(ready, console(handle)) is not None, f"{ready!r}")
    state = a.base / "part.state"
    handle.save(state)
    status = handle.poll()
    assert status is not None and status.saved and status.exit_code is None, status
    before = console(handle)
    assert final_line(reference) not in before, "the save came too late: the guest had ended"
    a.close()
    moved = b.base / "moved.state"
    b.base.mkdir(parents=True, exist_ok=True)
    shutil.copy(state, moved)                       # "transferred" to the other node
    restored = b.mgr.launch(b.spec(root, "part", guest, *args, vcpus=vcpus), 3, restore=moved,
                            stdin=gated)
    if gated:
        restored.write_stdin(b"g")
    after = finish(restored)
    assert after.startswith(before), "the restored console lost the output before the save"
    return reference, after


def test_multithreaded_checksum_survives_save_and_restore_elsewhere(
        nodes: Callable[[str], Node], root: Path) -> None:
    reference, combined = _save_and_restore(nodes, root, "sr_checksum", CHECKSUM_ARGS,
                                            MIDWAY)
    assert final_line(combined) == final_line(reference)
    assert final_line(reference).startswith(b"final=")


@pytest.mark.parametrize("vcpus", [1, 2])
def test_process_tree_mid_pipeline_survives_save_and_restore_elsewhere(
        nodes: Callable[[str], Node], root: Path, vcpus: int) -> None:
    """Saved while a producer child writes through a pipe to its parent, with a zombie and
    a blocked pending signal in the tree: the restored run ends exactly as an
    uninterrupted one (same sum, count, exit codes)."""
    reference, combined = _save_and_restore(nodes, root, "sr_pipeline", ("20000",),
                                            MIDWAY, vcpus=vcpus)
    assert re.fullmatch(rb"final=\d+ count=20000 producer=0 zombie=7", final_line(reference))
    assert final_line(combined) == final_line(reference)


@pytest.mark.parametrize("parent, producer", [("sr_pipeline", "/sr_pipeline32"),
                                              ("sr_pipeline32", "/sr_pipeline")])
def test_mixed_architecture_tree_survives_save_and_restore(
        nodes: Callable[[str], Node], root: Path, parent: str, producer: str) -> None:
    """An x86_64 parent whose child execs an i386 producer (and the reverse), saved while
    both run on the partition's vCPUs: the restored run ends as an uninterrupted one."""
    if not (root / "sr_pipeline32").exists():
        pytest.skip("gcc cannot build -m32 guests here")
    reference, combined = _save_and_restore(nodes, root, parent, ("20000", producer),
                                            MIDWAY, vcpus=2)
    other = b"32-bit" if producer.endswith("32") else b"64-bit"
    assert other in reference, "the producer did not run as the other architecture"
    assert re.fullmatch(rb"final=\d+ count=20000 producer=0 zombie=7", final_line(reference))
    assert final_line(combined) == final_line(reference)


def test_descriptors_in_flight_survive_save_and_restore(nodes: Callable[[str], Node],
                                                        root: Path) -> None:
    """Saved while an SCM_RIGHTS message (a pipe's write end, a file with its offset) waits
    unreceived and its sender closed its own copies: the restored receiver gets working
    descriptors, and the pipe reaches EOF once the passed end is closed."""
    reference, combined = _save_and_restore(nodes, root, "sr_rights", (), b"in flight",
                                            vcpus=1)
    assert final_line(reference) == b"final=[through the pipe] eof=0 file=[travels]"
    assert final_line(combined) == final_line(reference)


def test_shared_file_mappings_stay_shared_after_restore(nodes: Callable[[str], Node],
                                                        root: Path) -> None:
    """MAP_SHARED mappings of a file in the writable layer are mapped again on restore: a
    write after it reaches the other mapping and the file; an unlinked file's mapping keeps
    its data as ordinary memory."""
    reference, combined = _save_and_restore(nodes, root, "sr_shared", (), b"mapped a",
                                            vcpus=1)
    assert final_line(reference) == b"final second mapping R file BR orphan O"
    assert final_line(combined) == final_line(reference)


def test_a_wait_keeps_its_deadline_across_save_and_restore(nodes: Callable[[str], Node],
                                                           root: Path) -> None:
    """A poll(3 s) saved 2 s in ends about 1 s after the restore (guest clock), not 3 s."""
    a, b = nodes("a"), nodes("b")
    handle = a.mgr.launch(a.spec(root, "part", "sr_poll"), 1)
    wait_for(lambda: b"polling" in console(handle), "the poll to start")
    time.sleep(2.0)                 # places the save two seconds into the three-second wait
    state = a.base / "part.state"
    handle.save(state)
    status = handle.poll()
    assert status is not None and status.saved, status
    before = console(handle)
    a.close()
    restored = b.mgr.launch(b.spec(root, "part", "sr_poll"), 2, restore=state)
    out = finish(restored)
    assert out.startswith(before)       # the console's history came along
    assert final_line(out) == b"poll=0 waited-under-4s=1 waited-2.9s-or-more=1"


def test_32bit_checksum_survives_save_and_restore(nodes: Callable[[str], Node],
                                                  root: Path) -> None:
    if not (root / "sr_checksum32").exists():
        pytest.skip("gcc cannot build -m32 guests here")
    reference, combined = _save_and_restore(nodes, root, "sr_checksum32", CHECKSUM_ARGS,
                                            MIDWAY)
    assert final_line(combined) == final_line(reference)


def test_open_file_offset_and_upper_layer_travel(nodes: Callable[[str], Node],
                                                 root: Path) -> None:
    reference, combined = _save_and_restore(nodes, root, "sr_files", ("60",), b"ready 1000",
                                            vcpus=1)
    assert combined == reference
    assert b"rest=29000 " in combined and b"out=[before\nafter\n]" in combined


@pytest.mark.parametrize("memory,touched,limit", [
    (1 << 30, 200, lambda n: n * 1.3),
    (16 << 30, 16, lambda n: 40 << 20),
])
def test_state_size_follows_touched_memory(nodes: Callable[[str], Node], root: Path,
                                           memory: int, touched: int,
                                           limit: Callable[[int], float]) -> None:
    node = nodes("a")
    handle = node.mgr.launch(node.spec(root, "mem", "sr_mem", str(touched), memory=memory), 1)
    wait_for(lambda: b"ready" in console(handle), "the guest to touch its memory")
    state = node.base / "mem.state"
    handle.save(state)
    size = state.stat().st_size
    assert size >= touched << 20
    assert size < limit(touched << 20), f"{size} bytes for {touched} MiB touched"


def test_checkpoint_continues_and_restores_that_moment(nodes: Callable[[str], Node],
                                                       root: Path) -> None:
    a, b = nodes("a"), nodes("b")
    handle = a.mgr.launch(a.spec(root, "cp", "sr_counter", "120"), 1)
    wait_for(lambda: b"\n20\n" in console(handle), "the counter to run")
    running_cp = a.base / "running.state"
    handle.checkpoint(running_cp)                           # while running: brief pause
    wait_for(lambda: b"\n40\n" in console(handle), "the guest to continue")
    handle.pause()                                          # paused: the exact moment is known
    paused_cp = a.base / "paused.state"
    handle.checkpoint(paused_cp)
    at_checkpoint = console(handle)
    time.sleep(0.1)
    assert console(handle) == at_checkpoint, "a checkpoint of a paused partition resumed it"
    handle.resume()
    full = b"".join(f"{i}\n".encode() for i in range(120)) + b"done\n"
    assert finish(handle) == full                           # the guest just continued
    restored = b.mgr.launch(b.spec(root, "cp", "sr_counter", "120"), 2, restore=paused_cp)
    assert finish(restored) == full       # the console up to the checkpoint, then the rest
    b.mgr.forget("cp")
    restored = b.mgr.launch(b.spec(root, "cp", "sr_counter", "120"), 3, restore=running_cp)
    assert finish(restored) == full
    reader = StateReader(running_cp)      # its console history ends where it was taken
    try:
        last = int(reader.read(b"CONS").rstrip(b"\n").rsplit(b"\n", 1)[-1])
    finally:
        reader.close()
    assert 20 <= last < 40                # taken after line 20 was printed


def test_compute_loop_without_syscalls_pauses_and_saves_exactly(
        nodes: Callable[[str], Node], root: Path) -> None:
    """Pause stops vCPUs asynchronously (asyncstop patch): many pauses, and a save, in the
    middle of a syscall-free read-modify-write loop change nothing in its result."""
    subprocess.run(["gcc", "-O2", "-static", "-w", "-o", str(root / "sr_spin"),
                    str(GUESTS / "sr_spin.c")], check=True)
    a, b = nodes("a"), nodes("b")
    reference = finish(a.mgr.launch(a.spec(root, "ref", "sr_spin", SPIN_N), 1))
    handle = a.mgr.launch(a.spec(root, "spin", "sr_spin", SPIN_N), 2)
    wait_for(lambda: b"start" in console(handle), "the loop to start")
    for _ in range(30):
        handle.pause(timeout=5.0)
        handle.resume()
        time.sleep(0.005)
    state = a.base / "spin.state"
    handle.save(state)
    assert b"spin=" not in console(handle)
    restored = b.mgr.launch(b.spec(root, "spin", "sr_spin", SPIN_N), 3, restore=state)
    assert final_line(finish(restored)) == final_line(reference)


def test_syscall_loop_pauses_and_saves_exactly_on_the_fast_path(
        nodes: Callable[[str], Node], root: Path) -> None:
    """Hot syscalls through the C fast path (issue 15) folded into a checksum: pauses and a
    save in the middle of the loop, then a restore elsewhere, end with the checksum of the
    uninterrupted run. Gated, so that a late save still finds the loop's process."""
    args = ("loop", "150000", "gate")
    a, b = nodes("a"), nodes("b")
    ref = a.mgr.launch(a.spec(root, "ref", "fastpath", *args), 1, stdin=True)
    ref.write_stdin(b"g")
    reference = finish(ref)
    handle = a.mgr.launch(a.spec(root, "loop", "fastpath", *args), 2, stdin=True)
    wait_for(lambda: b"progress 10%" in console(handle), "the loop to start")
    for _ in range(10):
        handle.pause(timeout=5.0)
        handle.resume()
        time.sleep(0.005)
    state = a.base / "loop.state"
    handle.save(state)
    status = handle.poll()
    assert status is not None and status.saved, status
    before = console(handle)
    assert b"loop n=" not in before
    restored = b.mgr.launch(b.spec(root, "loop", "fastpath", *args), 3, restore=state,
                            stdin=True)
    restored.write_stdin(b"g")
    after = finish(restored)
    assert after.startswith(before)
    assert final_line(after) == final_line(reference)
    assert final_line(reference).startswith(b"loop n=150000 sum=")
