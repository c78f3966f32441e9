"""A misbehaving guest is bounded: memory (image, heap, mmap, stack, file mappings), the stack
guard gap, and everything in the syscall layer whose size the guest chooses."""

from __future__ import annotations

import os
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, Run, make_root, run_machine

from node_agent.runtime.console import BufferConsole
from node_agent.runtime.machine import MAX_UNKNOWN_TRACKED, UNKNOWN_OTHERS, Machine
from node_agent.runtime.memory import ALLOWANCE, MAX_EXEC_RANGES, PAGE, GuestMemory
from node_agent.runtime.spec import ExitStatus, PartitionSpec
from node_agent.runtime.threads import MAX_THREADS

ARCHES = ["x86_64", "i386"]
DEADLINE = 60.0
MiB = 1 << 20


class GateConsole:
    """Collects output; a guest reading stdin waits until ``open_gate()``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.stdout = bytearray()
        self.gate = threading.Event()

    def write(self, fd: int, data: bytes) -> None:
        with self.cond:
            self.stdout += data
            self.cond.notify_all()

    def read_stdin(self, n: int) -> bytes:
        self.gate.wait(DEADLINE)
        return b"x"

    def wait_for(self, text: bytes) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: text in self.stdout, DEADLINE):
                raise AssertionError(f"guest never printed {text!r}: {bytes(self.stdout)!r}")


class Background:
    """A Machine running on a thread, so a test can look at it while the guest waits."""

    def __init__(self, root: Path, entry: str, args: tuple[str, ...], memory: int) -> None:
        self.spec = PartitionSpec(name="bounds", root=root, entrypoint=entry, args=args,
                                  memory_bytes=memory)
        self.console = GateConsole()
        self.machine = Machine(self.spec, self.console)
        self.status: list[ExitStatus] = []
        self.thread = threading.Thread(target=lambda: self.status.append(self.machine.run()))
        self.thread.start()

    def finish(self) -> ExitStatus:
        self.console.gate.set()
        self.thread.join(DEADLINE)
        assert self.status, "the guest did not finish"
        return self.status[0]


def present_bytes(mem: GuestMemory, lo: int | None = None, hi: int | None = None) -> int:
    """Bytes of [lo, hi) (default: the whole guest mapping) backed by host pages now."""
    lo = mem.base if lo is None else lo
    hi = mem.base + mem.size if hi is None else hi
    first = (mem.host + lo - mem.base) // PAGE
    count = (hi - lo) // PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        raw = f.read(count * 8)
    return sum(1 for i in range(7, len(raw), 8) if raw[i] & 0xC0) * PAGE


# -- 1. the image counts against memory; touched memory is bounded ----------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_an_image_that_does_not_fit_fails_with_one_line(run_guest: Callable[..., Run],
                                                         arch: str) -> None:
    run = run_guest("bigbss", arch=arch, memory=16 * MiB)
    reason = run.status.failed_reason or ""
    assert run.status.exit_code is None, run.stdout
    assert reason.startswith("cannot start: the image's segments and bss need 1.7Gi"), reason
    assert "16Mi" in reason and "\n" not in reason


@pytest.mark.parametrize("arch", ARCHES)
def test_an_image_that_fits_runs(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("bigbss", arch=arch, memory=2048 * MiB)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"touched 1700 MiB of bss\n"


def test_arguments_larger_than_a_quarter_of_the_stack_fail_with_one_line(
        run_guest: Callable[..., Run]) -> None:
    """As execve's E2BIG: argv + envp may take a quarter of the stack (16 MiB: 4 MiB stack)."""
    run = run_guest("hello", "x" * (5 * MiB), memory=16 * MiB)
    assert run.status.exit_code is None
    assert run.status.failed_reason == (
        "cannot start: the arguments and environment (5.0Mi) take more than a quarter of "
        "the 4Mi stack")


@pytest.mark.parametrize("arch", ARCHES)
def test_touched_memory_never_exceeds_the_partition(guest: GuestBuilder, tmp_path: Path,
                                                     arch: str) -> None:
    """memhog fills an 8 MiB bss, brk, every mmap it can get and 7 MiB of stack; the host
    pages behind the guest mapping stay within memory_bytes + ALLOWANCE."""
    memory = 32 * MiB
    root = make_root(tmp_path, guest("memhog", arch), "/bin/memhog")
    bg = Background(root, "/bin/memhog", ("7168",), memory)
    try:
        bg.console.wait_for(b"hogged")
        mem = bg.machine.mem
        assert mem is not None
        used = present_bytes(mem)
    finally:
        status = bg.finish()
    assert status.exit_code == 0, status
    assert used <= memory + ALLOWANCE, (used - memory) // 1024
    assert used >= memory - 3 * MiB // 2     # it did get (nearly) all of it


# -- 2. file mappings are lazy ----------------------------------------------------------------
def _sparse_root(tmp_path: Path, guest: GuestBuilder, arch: str, size: int,
                 marks: dict[int, int]) -> Path:
    root = make_root(tmp_path, guest("mapfile", arch), "/bin/mapfile")
    with open(root / "data.bin", "wb") as f:
        f.truncate(size)
        for page, value in marks.items():
            f.seek(page * PAGE)
            f.write(bytes([value]))
    return root


@pytest.mark.parametrize("arch", ARCHES)
def test_file_mapping_reads_only_the_pages_touched(guest: GuestBuilder, tmp_path: Path,
                                                    arch: str) -> None:
    size = 48 * MiB
    root = _sparse_root(tmp_path, guest, arch, size, {0: 1, 5: 5, 11000: 99})
    bg = Background(root, "/bin/mapfile", ("/data.bin", str(size), "0", "0", "5", "11000",
                                           "wait"), 64 * MiB)
    try:
        bg.console.wait_for(b"waiting")
        mem = bg.machine.mem
        assert mem is not None
        addr = int(bg.console.stdout.split(b"mapped at ")[1].split()[0], 16)
        in_mapping = present_bytes(mem, addr, addr + size)
    finally:
        status = bg.finish()
    assert status.exit_code == 0, status
    assert b"page 0: 1\npage 5: 5\npage 11000: 99\n" in bg.console.stdout
    assert in_mapping <= 16 * PAGE, in_mapping // PAGE


@pytest.mark.parametrize("arch", ARCHES)
def test_a_mapping_larger_than_the_partition_is_enomem_without_host_memory(
        guest: GuestBuilder, tmp_path: Path, arch: str) -> None:
    """A 1 GiB sparse file in a 64 MiB partition: ENOMEM (the partition's address space is
    its memory, as RLIMIT_AS says), and no host allocation of the file's size."""
    root = _sparse_root(tmp_path, guest, arch, 1 << 30, {7: 7})
    tracemalloc.start()
    try:
        run = run_machine(root, "/bin/mapfile", ("/data.bin", str(1 << 30), "0", "7"),
                          memory=64 * MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"mmap errno=12\n"
    assert peak < 16 * MiB


@pytest.mark.parametrize("arch", ARCHES)
def test_a_window_of_a_huge_sparse_file_is_mapped_lazily(guest: GuestBuilder, tmp_path: Path,
                                                         arch: str) -> None:
    window = 32 * MiB
    offset = 512 * MiB
    root = _sparse_root(tmp_path, guest, arch, 1 << 30, {offset // PAGE + 3: 42})
    tracemalloc.start()
    try:
        run = run_machine(root, "/bin/mapfile", ("/data.bin", str(window), str(offset), "3"),
                          memory=64 * MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert run.status.exit_code == 0, run.status
    assert run.stdout.endswith(b"page 3: 42\n")
    assert peak < 8 * MiB


@pytest.mark.parametrize("arch", ARCHES)
def test_writes_to_a_file_mapping_stay_private(guest: GuestBuilder, tmp_path: Path,
                                               arch: str) -> None:
    root = _sparse_root(tmp_path, guest, arch, 4 * PAGE, {0: 9})
    run = run_machine(root, "/bin/mapfile", ("/data.bin", str(4 * PAGE), "0", "write", "0"))
    assert run.status.exit_code == 0, run.status
    assert run.stdout.endswith(b"page 0: 238\n")
    assert (root / "data.bin").read_bytes()[:1] == b"\x09"


def test_a_file_mapping_survives_save_and_restore(guest: GuestBuilder, tmp_path: Path) -> None:
    """Pages the guest had not touched before the save read the file's data after it."""
    size = 8 * MiB
    marks = {0: 1, 700: 70, 1500: 150}
    root = _sparse_root(tmp_path, guest, "x86_64", size, marks)
    upper = tmp_path / "upper"
    upper.mkdir()
    spec = PartitionSpec(name="mapsave", root=root, entrypoint="/bin/mapfile",
                         args=("/data.bin", str(size), "0", "0", "wait", "700", "1500"),
                         memory_bytes=64 * MiB, upper=upper)
    console = GateConsole()
    machine = Machine(spec, console)
    result: list[ExitStatus] = []
    runner = threading.Thread(target=lambda: result.append(machine.run()))
    runner.start()
    console.wait_for(b"waiting")
    machine.pause()
    machine.save_state(tmp_path / "state")
    machine.end_saved()
    runner.join(DEADLINE)
    assert result and result[0].saved
    (root / "data.bin").unlink()                  # the restored guest cannot read the file
    again = BufferConsole(stdin=b"x")
    status = Machine.restore(spec, again, tmp_path / "state").run()
    assert status.exit_code == 0, status
    assert bytes(again.stdout) == b"page 700: 70\npage 1500: 150\n"


def test_unmapping_a_file_mapping_gives_anonymous_memory_back(tmp_path: Path) -> None:
    data = tmp_path / "f"
    data.write_bytes(b"\x07" * (3 * PAGE))
    mem = GuestMemory(0x400000, 0x410000, 16 * MiB, 64)
    fd = os.open(data, os.O_RDONLY)
    try:
        addr = mem.mmap(4 * PAGE, None, (fd, 0))
        assert addr is not None
        assert mem.read(addr, 4) == b"\x07" * 4
        assert mem.read(addr + 3 * PAGE, 4) == bytes(4)       # past the end: zero
        mem.write(addr, b"\x01")
        mem.discard(addr, PAGE)                               # MADV_DONTNEED: the file again
        assert mem.read(addr, 1) == b"\x07"
        assert mem.file_backed() == [(addr, addr + 3 * PAGE)]
        assert mem.munmap(addr + PAGE, PAGE)
        assert mem.file_backed() == [(addr, addr + PAGE), (addr + 2 * PAGE, addr + 3 * PAGE)]
        assert mem.mmap_anon(PAGE, fixed=addr + PAGE) == addr + PAGE
        assert mem.read(addr + PAGE, PAGE) == bytes(PAGE)
        assert mem.munmap(addr, 4 * PAGE)
        assert mem.file_backed() == []
        assert mem.mmap_anon(4 * PAGE, fixed=addr) == addr
        assert mem.read(addr, 4 * PAGE) == bytes(4 * PAGE)
    finally:
        os.close(fd)
        mem.close()


# -- 4. the stack guard gap ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_stack_overflow_faults_in_the_guard_gap(run_guest: Callable[..., Run],
                                                arch: str) -> None:
    memory = 32 * MiB                       # an 8 MiB stack
    ok = run_guest("recurse", "4096", arch=arch, memory=memory)
    assert ok.status.exit_code == 0 and ok.stdout.startswith(b"intact"), ok.status
    run = run_guest("recurse", str(9 * 1024), arch=arch, memory=memory)
    reason = run.status.failed_reason or ""
    assert run.status.exit_code is None, run.stdout
    assert reason.startswith("guest fault: write to unmapped address"), reason
    assert reason.endswith("(stack overflow into the guard gap)"), reason


def test_mmap_and_brk_never_enter_the_guard_gap() -> None:
    mem = GuestMemory(0x400000, 0x410000, 16 * MiB, 64)
    try:
        spans = []
        while (addr := mem.mmap_anon(256 * 1024)) is not None:
            spans.append(addr)
        assert spans and max(spans) + 256 * 1024 <= mem.gap_low
        assert mem.mmap_anon(PAGE, fixed=mem.gap_low) is None
        assert mem.mmap_anon(2 * PAGE, fixed=mem.gap_low - PAGE) is None
        assert mem.set_brk(mem.gap_low + PAGE) == mem.brk_start
        regions = [(a, a + n) for a, n, _, _ in mem.unicorn_regions()]
        assert all(hi <= mem.gap_low or lo >= mem.stack_low for lo, hi in regions)
        with pytest.raises(Exception, match="bad guest pointer"):
            mem.write(mem.gap_low + 16, b"x")
    finally:
        mem.close()


# -- 3. everything a guest can grow in the syscall layer is capped ---------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_unknown_syscall_numbers_are_counted_in_bounded_space(run_guest: Callable[..., Run],
                                                              arch: str) -> None:
    run = run_guest("unknown_many", "5000", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"enosys=5000\n"
    counts = run.status.unknown_syscalls
    assert len(counts) == MAX_UNKNOWN_TRACKED + 1
    assert sum(counts.values()) == 5000
    assert counts[UNKNOWN_OTHERS] == 5000 - MAX_UNKNOWN_TRACKED
    assert len([e for e in run.events if e[0] == "UnknownSyscall"]) == MAX_UNKNOWN_TRACKED + 1


@pytest.mark.parametrize("arch", ARCHES)
def test_timers_of_early_wakeups_do_not_pile_up(guest: GuestBuilder, tmp_path: Path,
                                                arch: str) -> None:
    root = make_root(tmp_path, guest("futex_pingpong", arch), "/bin/pingpong")
    machines: list[Machine] = []
    run = run_machine(root, "/bin/pingpong", ("3000",), control=machines.append)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"rounds=3000\n"
    assert len(machines[0].sched.timers) <= 2 * MAX_THREADS


@pytest.mark.parametrize("arch", ARCHES)
def test_executable_ranges_are_capped(run_guest: Callable[..., Run], arch: str) -> None:
    n = MAX_EXEC_RANGES + 60
    run = run_guest("exec_pages", str(n), arch=arch)
    assert run.status.exit_code == 0, run.status
    ok, err = (int(part.split(b"=")[1]) for part in run.stdout.split())
    assert err == 12 and ok <= MAX_EXEC_RANGES, run.stdout


def test_mmap_bookkeeping_is_capped() -> None:
    """Every other page unmapped: each munmap splits a range; past the cap munmap says
    ENOMEM (as Linux at vm.max_map_count) and nothing changes."""
    mem = GuestMemory(0x400000, 0x410000, 16 * MiB, 64)
    try:
        mem._alloc.limit = 50
        addr = mem.mmap_anon(400 * PAGE)
        assert addr is not None
        results = [mem.munmap(addr + i * PAGE, PAGE) for i in range(1, 400, 2)]
        assert all(results[:49]) and not any(results[49:-1])
        assert results[-1]                   # the last page only shortens a range
        assert len(mem._starts) == 50
    finally:
        mem.close()
