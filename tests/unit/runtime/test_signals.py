"""Signals as Linux delivers them: handlers, siginfo, masks, alternate stacks, timers,
EINTR and restarts, faults taken by handlers, hostile frames, save/restore.

Guests print one line per check; the output is compared with the same static binary run
natively on this host (Linux itself, the reference qemu-user only imitates: qemu-i386 hangs
now and then in sig_eintr's signal races), or asserted exactly."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, Run, make_root

from node_agent.runtime.console import BufferConsole
from node_agent.runtime.machine import Machine
from node_agent.runtime.spec import PartitionSpec

ARCHES = ["x86_64", "i386"]


def _native(binary: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(binary), *args], capture_output=True, timeout=60)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name,vcpus", [("sig_basic", 1), ("sig_timers", 1), ("sig_eintr", 2),
                                        ("sig_eintr", 1)])
def test_matches_linux(guest: GuestBuilder, run_guest: Callable[..., Run], name: str,
                       vcpus: int, arch: str) -> None:
    run = run_guest(name, arch=arch, vcpus=vcpus)
    reference = _native(guest(name, arch))
    assert run.status.failed_reason is None, run.status
    assert run.stdout.decode() == reference.stdout.decode()
    assert run.status.exit_code == reference.returncode == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_basic_values(run_guest: Callable[..., Run], arch: str) -> None:
    out = run_guest("sig_basic", arch=arch).stdout.decode().splitlines()
    for line in ("kill: signo=12 code=0 pid_ok=1", "tgkill: signo=12 code=-6 pid_ok=1",
                 "sigqueue: code=-1 value=4242", "resethand: hits=1 dfl=1",
                 "nodefer: max_depth=2", "defer: max_depth=1", "blocked: hits=0 pending=1",
                 "unblocked: hits=1 pending=0", "ignored: pending=0", "onstack: 1",
                 "sigsuspend: r=-1 eintr=1 hits=1 mask_back=1",
                 "sigtimedwait timeout: r=-1 eagain=1", "siglongjmp: usr1_blocked=0",
                 "segv: sig=11", "fpe: sig=8",
                 "fpu: c=2.333333333333333 b2=2.000000000000000 a=0.33333333333333331"):
        assert line in out, (line, out)


@pytest.mark.parametrize("arch", ARCHES)
def test_eintr_and_restart(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("sig_eintr", arch=arch, vcpus=2)
    assert run.stdout.decode().splitlines() == [
        "nanosleep: r=-1 eintr=1 rem_ok=1 hits=1 same_thread=1",
        "futex: r=-1 eintr=1 hits=2",
        "futex restarted: r=0 word=1 hits=3",
        "nanosleep with SA_RESTART: r=-1 eintr=1 hits=4"]


@pytest.mark.parametrize("arch", ARCHES)
def test_abort_in_pid_1_ends_with_glibcs_fallback_fault(run_guest: Callable[..., Run],
                                                        arch: str) -> None:
    """pid 1 is init: its SIGABRT (no handler) is discarded, so glibc's abort() falls back
    to hlt, whose #GP kills it (Linux: killed by SIGSEGV). A child dies of SIGABRT
    (test_init_and_faults.py)."""
    run = run_guest("sig_abort", arch=arch)
    assert run.stdout == b"before abort\n"
    assert run.status.exit_code is None
    assert (run.status.failed_reason or "").startswith(
        "guest fault: general protection fault at pc 0x"), run.status


@pytest.mark.parametrize("arch", ARCHES)
def test_uncaught_signal_to_pid_1_is_discarded(run_guest: Callable[..., Run],
                                               arch: str) -> None:
    run = run_guest("sig_hostile", "term", arch=arch)
    assert run.stdout == b"survived SIGTERM\n"
    assert run.status.exit_code == 0, run.status
    assert not [e for e in run.events if e[0] == "GuestSignal"]


@pytest.mark.parametrize("arch", ARCHES)
def test_corrupted_ucontext_gives_no_privilege(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("sig_hostile", "flags", arch=arch)
    assert run.stdout == b"iopl=0 if=1 cs_rpl=3 ss_rpl=3 usr1_blocked=1\n", run.status
    assert run.status.exit_code == 0
    run = run_guest("sig_hostile", "flags", "cli", arch=arch)
    assert (run.status.failed_reason or "").startswith(
        "guest fault: general protection fault at pc 0x"), run.status


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("mode,reason", [
    ("pc", "guest fault: execute at unmapped address 0x10 at pc 0x10"),
    ("sp", "guest fault: "),
    ("fpstate", "killed by SIGSEGV (bad signal frame: bad guest pointer 0x"),
])
def test_corrupted_ucontext_fails_cleanly(run_guest: Callable[..., Run], arch: str, mode: str,
                                          reason: str) -> None:
    run = run_guest("sig_hostile", mode, arch=arch)
    assert run.status.exit_code is None
    assert (run.status.failed_reason or "").startswith(reason), run.status


@pytest.mark.parametrize("arch", ARCHES)
def test_save_restore_keeps_pending_signal_and_alarm(guest: GuestBuilder, tmp_path: Path,
                                                     arch: str) -> None:
    root = make_root(tmp_path, guest("sig_save", arch), "/bin/sig_save")
    spec = PartitionSpec(name="sig-save", root=root, entrypoint="/bin/sig_save", args=(),
                         env=(), vcpus=1, memory_bytes=64 << 20, upper=tmp_path / "upper",
                         cwd="/")
    (tmp_path / "upper").mkdir()
    state = tmp_path / "sig.state"
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
    assert bytes(console.stdout) == b"ready usr1=0\n"
    console2 = BufferConsole(b"")
    status = Machine.restore(spec, console2, state).run()
    assert status.exit_code == 0, status
    assert bytes(console2.stdout) == b"unblocked usr1=1 alarmed=0\nalarm after about 1s\n"
