"""Real static guests run to completion (or fail cleanly) in a Machine."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import BUSYBOX, GuestBuilder, Run, make_root, run_machine

from node_agent.runtime.machine import Machine
from node_agent.runtime.spec import STOP_EXIT_CODE, PartitionSpec

ARCHES = ["x86_64", "i386"]


@pytest.mark.parametrize("arch", ARCHES)
def test_hello_args_env_and_exit_code(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("hello", "7", "two words", arch=arch, env=(("GREETING", "hi"),))
    assert run.status.exit_code == 7
    assert run.status.failed_reason is None
    assert run.stdout.decode().splitlines() == [
        "argc=3 exe=/bin/hello", "arg1=7", "arg2=two words", "GREETING=hi"]
    assert run.stderr == b"to-stderr\n"
    assert run.status.unknown_syscalls == {}


@pytest.mark.parametrize("arch", ARCHES)
def test_sandbox_file_io_and_escapes(guest: GuestBuilder, tmp_path: Path, arch: str) -> None:
    files = {"data/input.txt": b"lower\n", "data/remove-me.txt": b"x"}
    root = make_root(tmp_path, guest("fileio", arch), "/bin/fileio", files)
    upper = tmp_path / "upper"
    upper.mkdir()
    run = run_machine(root, "/bin/fileio", upper=upper)
    assert run.stdout.decode().splitlines()[-1] == "failures=0", run.stdout.decode()
    assert run.status.exit_code == 0
    # the lower layer is untouched; changes live in the upper layer
    assert (root / "data/input.txt").read_bytes() == b"lower\n"
    assert (root / "data/remove-me.txt").exists()
    assert (upper / "data/input.txt").read_bytes() == b"lower\nmore\n"
    assert (upper / "data/.wh.remove-me.txt").exists()
    assert not (upper / "work/b.txt").exists()
    assert (upper / "work/link").is_symlink()


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("vcpus", [1, 4])
def test_four_threads(run_guest: Callable[..., Run], arch: str, vcpus: int) -> None:
    run = run_guest("threads", "200000", arch=arch, vcpus=vcpus)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"checksum=399776612 rets=612\n"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two host cores")
def test_more_vcpus_run_threads_in_parallel(guest: GuestBuilder, tmp_path: Path) -> None:
    """vcpus=4 beats vcpus=1 on wall time, or (on a host busy with other work) at least
    burns CPU time faster than wall time, which only parallel vCPU threads can do."""
    root = make_root(tmp_path, guest("threads"), "/bin/threads")
    wall, cpu = {}, {}
    for vcpus in (1, 4):
        start, start_cpu = time.perf_counter(), time.process_time()
        run = run_machine(root, "/bin/threads", ("40000000",), vcpus=vcpus)
        wall[vcpus] = time.perf_counter() - start
        cpu[vcpus] = time.process_time() - start_cpu
        assert run.status.exit_code == 0
    parallel = wall[4] < wall[1] * 0.85 or cpu[4] > wall[4] * 1.25
    if not parallel and os.getloadavg()[0] > (os.cpu_count() or 1) - 1:
        pytest.skip(f"host too busy to measure a parallel speed-up: {wall}, {cpu}")
    assert parallel, (wall, cpu)


@pytest.mark.parametrize("arch", ARCHES)
def test_malloc_heavy(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("mallocs", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.startswith(b"malloc sum=")


@pytest.mark.parametrize("arch", ARCHES)
def test_malloc_until_enomem(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("enomem", arch=arch, memory=16 << 20)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"allocated some\n"
    count = int(run.stderr.decode().strip().split("=")[1])
    assert 0 < count < 16


@pytest.mark.parametrize("arch", ARCHES)
def test_null_write_fails_the_partition(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("fault", arch=arch)
    assert run.status.exit_code is None
    assert run.status.failed_reason is not None
    assert run.status.failed_reason.startswith("guest fault: write to unmapped address 0x10 at pc")


@pytest.mark.parametrize("arch", ARCHES)
def test_null_call_fails_the_partition(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("fault", "call", arch=arch)
    assert run.status.exit_code is None
    assert run.status.failed_reason == "guest fault: execute at unmapped address 0x0"


@pytest.mark.parametrize("arch", ARCHES)
def test_division_by_zero_fails_the_partition(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("divzero", arch=arch)
    assert run.status.exit_code is None
    assert "division error" in (run.status.failed_reason or "")


@pytest.mark.parametrize("arch", ARCHES)
def test_unknown_syscall_is_enosys_counted_and_reported_once(
        run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("unknown", arch=arch)
    assert run.status.exit_code == 0
    assert run.stdout == b"r=-1 errno_is_enosys=1 r2=-1\n"
    assert run.status.unknown_syscalls == {999: 2}
    assert run.events == [("UnknownSyscall", f"syscall 999 ({arch}) returned ENOSYS")]


def test_stop_halts_a_busy_guest(guest: GuestBuilder, tmp_path: Path) -> None:
    root = make_root(tmp_path, guest("threads"), "/bin/threads")

    def stop_soon(machine: Machine) -> None:
        threading.Timer(0.3, machine.stop).start()

    start = time.perf_counter()
    run = run_machine(root, "/bin/threads", ("4000000000",), vcpus=2, control=stop_soon)
    assert run.status.exit_code == STOP_EXIT_CODE
    assert run.status.failed_reason is None
    assert time.perf_counter() - start < 5


def test_missing_entrypoint_and_non_elf_fail_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "notes.txt").write_text("echo hi\n")
    assert "not found" in (run_machine(root, "/nope").status.failed_reason or "")
    bad = run_machine(root, "/notes.txt").status
    assert bad.exit_code is None
    assert (bad.failed_reason or "").startswith("bad image: not an ELF")
    script = run_machine(root, "/script.sh").status       # its interpreter is not in the root
    assert "/bin/sh not found in the root" in (script.failed_reason or "")


def test_huge_memory_costs_only_touched_pages(run_guest: Callable[..., Run]) -> None:
    run = run_guest("hello", memory=64 << 30)
    assert run.status.exit_code == 0


class _BlockingStdin:
    """A console whose stdin never delivers anything."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def write(self, fd: int, data: bytes) -> None:
        pass

    def read_stdin(self, n: int) -> bytes:
        self.release.wait(10)
        return b""


def test_stop_works_while_the_guest_waits_for_stdin(tmp_path: Path) -> None:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    root = make_root(tmp_path, BUSYBOX, "/bin/busybox")
    console = _BlockingStdin()
    spec = PartitionSpec(name="cat", root=root, entrypoint="/bin/busybox", args=("cat",))
    machine = Machine(spec, console)
    threading.Timer(0.3, machine.stop).start()
    start = time.perf_counter()
    status = machine.run()
    console.release.set()
    assert status.exit_code == STOP_EXIT_CODE
    assert time.perf_counter() - start < 3



@pytest.mark.parametrize("vcpus", [1, 2])
def test_sleep_parks_the_thread_for_the_requested_time(tmp_path: Path, vcpus: int) -> None:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    root = make_root(tmp_path, BUSYBOX, "/bin/busybox")
    start = time.perf_counter()
    run = run_machine(root, "/bin/busybox", ("sleep", "0.3"), vcpus=vcpus)
    elapsed = time.perf_counter() - start
    assert run.status.exit_code == 0
    assert 0.3 <= elapsed < 2.0


@pytest.mark.parametrize("arch", ARCHES)
def test_thread_slots_are_recycled(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("manythreads", arch=arch, vcpus=2)
    assert run.status.exit_code == 0, (run.status, run.stdout)
    assert run.stdout == b"sum=359400\n"


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_fpu_starts_as_linux_leaves_it_at_exec(run_guest: Callable[..., Run], arch: str) -> None:
    """x87 control word 0x37F and MXCSR 0x1F80: double and long double at full precision."""
    run = run_guest("fpu_state", arch=arch)
    assert run.status.exit_code == 0, run.status
    lines = run.stdout.decode().splitlines()
    assert lines[0] == "cw=0x37f mxcsr=0x1f80"
    assert lines[1] == "0.33333333333333331"
    assert lines[2] == "0.333333333333333333342"
    assert lines[4:] == ["round=1", "0.10000000000000001"]
