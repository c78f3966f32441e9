"""pid 1 is the partition's init, orphans go to it, and CPU faults are signals.

- A signal pid 1 has no handler for is discarded (SIGKILL and SIGSTOP included) when it
  comes from inside the partition; the runtime's own (Shut Down's SIGTERM, the OOM kill's
  SIGKILL) come from outside: SIGKILL still ends pid 1, a SIGTERM without a handler does
  nothing, and a Shut Down of a lone pid 1 without one turns off at once.
- mprotect and mmap's prot are enforced on the heap, mmap area and stack: a store to a
  read-only page is SIGSEGV/SEGV_ACCERR with si_addr, across fork and saved states.
- idiv overflow is SIGFPE/FPE_INTDIV, and exceptions after one a handler took are not
  double faults.

The expected lines are what Linux prints for the same guest as pid 1 of a pid namespace
(checked with `unshare --pid --fork`), except the cap case, which is this runtime's bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, Run, make_root, run_machine

from node_agent.runtime.console import BufferConsole
from node_agent.runtime.machine import Machine
from node_agent.runtime.memory import MAX_PROT_RANGES, PAGE, GuestMemory
from node_agent.runtime.spec import STOP_EXIT_CODE, PartitionSpec

ARCHES = ["x86_64", "i386"]
GUEST = "init_faults"


def _when_ready(machine: Machine, then: Callable[[Machine], None]) -> None:
    """Call ``then(machine)`` from a helper thread once the guest printed "ready"."""

    def waiter() -> None:
        deadline = time.monotonic() + 30
        console = machine.console
        assert isinstance(console, BufferConsole)
        while b"ready" not in bytes(console.stdout) and time.monotonic() < deadline:
            time.sleep(0.01)
        then(machine)

    threading.Thread(target=waiter, daemon=True).start()


def _run(guest: GuestBuilder, tmp_path: Path, *args: str, arch: str = "x86_64",
         control: Callable[[Machine], None] | None = None) -> tuple[Run, float]:
    root = make_root(tmp_path, guest(GUEST, arch), f"/bin/{GUEST}")
    t0 = time.monotonic()
    run = run_machine(root, f"/bin/{GUEST}", args, control=control)
    return run, time.monotonic() - t0


# -- pid 1 is init -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_pid_1_discards_signals_it_has_no_handler_for(run_guest: Callable[..., Run],
                                                      arch: str) -> None:
    run = run_guest(GUEST, "self", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "survived 15", "survived 9", "survived 19", "survived 20", "survived 10",
        "survived 2", "survived 11", "survived alarm", "blocked one queued: 1",
        "unblocked: discarded 1", "sigtimedwait takes it: 1"]
    assert not [e for e in run.events if e[0] == "GuestSignal"]


@pytest.mark.parametrize("arch", ARCHES)
def test_children_cannot_kill_pid_1_but_die_of_their_own_signals(
        run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest(GUEST, "child", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "pid 1 survived its child's SIGKILL/SIGTERM/SIGSTOP, child exited 0",
        "abort in a child: signaled 1 sig 6"]


@pytest.mark.parametrize("arch", ARCHES)
def test_a_cpu_fault_kills_only_the_child_that_made_it(run_guest: Callable[..., Run],
                                                      arch: str) -> None:
    """A child's unhandled SIGSEGV/SIGILL/SIGFPE (NULL write, ud2, division by zero, a
    jump to NULL) ends that child with the signal; pid 1 reaps it and the partition runs
    on (it used to fail the whole partition). Each death is an event naming the fault."""
    run = run_guest("child_faults", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "null-write: signaled=1 sig=11", "ud2: signaled=1 sig=4", "divide: signaled=1 sig=8",
        "jump-null: signaled=1 sig=11", "parent goes on"]
    faults = [m for r, m in run.events if r == "ProcessFault"]
    assert len(faults) == 4 and "killed by SIGSEGV" in faults[0], faults
    assert "killed by SIGILL" in faults[1] and "killed by SIGFPE" in faults[2], faults


def test_a_cpu_fault_still_kills_pid_1(run_guest: Callable[..., Run]) -> None:
    run = run_guest(GUEST, "fault")
    assert run.status.exit_code is None
    assert (run.status.failed_reason or "").startswith(
        "guest fault: write to unmapped address 0x10"), run.status


def test_sigkill_from_outside_ends_pid_1(guest: GuestBuilder, tmp_path: Path) -> None:
    """The OOM kill's path (Machine.signal_process): from outside, SIGKILL is delivered."""
    def kill(machine: Machine) -> None:
        assert machine.init is not None
        machine.signal_process(machine.init, 9)

    run, _ = _run(guest, tmp_path, "stop", "alone", control=lambda m: _when_ready(m, kill))
    assert run.status.exit_code == 128 + 9, run.status


def test_shut_down_of_a_lone_pid_1_without_handler_turns_off_at_once(
        guest: GuestBuilder, tmp_path: Path) -> None:
    run, took = _run(guest, tmp_path, "stop", "alone",
                     control=lambda m: _when_ready(m, lambda m: m.stop(20.0)))
    assert (run.status.exit_code, run.status.failed_reason) == (STOP_EXIT_CODE, None)
    assert took < 10.0, took          # not the 20 s grace: nothing could react to it


def test_shut_down_runs_pid_1s_sigterm_handler(guest: GuestBuilder, tmp_path: Path) -> None:
    run, took = _run(guest, tmp_path, "stop", "handler",
                     control=lambda m: _when_ready(m, lambda m: m.stop(20.0)))
    assert run.status.exit_code == 3, run.status
    assert run.stdout == b"ready\nSIGTERM handled\n"
    assert took < 10.0, took


def test_shut_down_ends_children_and_pid_1_goes_on(guest: GuestBuilder,
                                                   tmp_path: Path) -> None:
    """pid 1 without a handler is not alone: its child gets SIGTERM and dies, and pid 1
    (which SIGTERM did not touch) notices and ends within the grace with its own status."""
    run, took = _run(guest, tmp_path, "stop", "parent",
                     control=lambda m: _when_ready(m, lambda m: m.stop(20.0)))
    assert run.status.exit_code == 7, run.status
    assert run.stdout == b"ready\nchild: signaled 1 sig 15\n"
    assert took < 10.0, took


# -- orphans ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_an_orphan_sees_its_parent_change_to_pid_1(run_guest: Callable[..., Run],
                                                   arch: str) -> None:
    run = run_guest(GUEST, "orphan", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"first 1 now pid 1 1\npid 1 reaps the orphan: 1\n"


# -- CPU faults as signals ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_protections_are_enforced(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest(GUEST, "prot", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "rw store: sig 0", "mprotect R: 0",
        "ro store: sig 11 accerr 1 addr ok 1, value kept 1",
        "next page still rw: sig 0", "read of rw page: sig 0",
        "read of PROT_NONE page: sig 11 accerr 1", "unaligned mprotect: -1 EINVAL",
        "mmap PROT_READ store: sig 11", "child inherits read-only: sig 11",
        "mprotect RW again: sig 0", "remapped rw: same 1 sig 0", "1500 toggles: wrong 0"]


def test_protected_ranges_are_capped(run_guest: Callable[..., Run]) -> None:
    """Beyond MAX_PROT_RANGES, taking permissions away succeeds without being enforced;
    adding execute gives ENOMEM."""
    run = run_guest(GUEST, "cap")
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"read-only x300: failed 0\nexec x400: some ENOMEM 1\n"


@pytest.mark.parametrize("arch", ARCHES)
def test_idiv_overflow_and_repeated_exceptions_are_signals(run_guest: Callable[..., Run],
                                                           arch: str) -> None:
    run = run_guest(GUEST, "fpe", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == 3 * [
        "x/0: sig 8 intdiv 1", "INT_MIN/-1: sig 8 intdiv 1", "hlt: sig 11"]


def test_protections_survive_a_saved_state(guest: GuestBuilder, tmp_path: Path) -> None:
    root = make_root(tmp_path, guest(GUEST), f"/bin/{GUEST}")
    (tmp_path / "upper").mkdir()
    spec = PartitionSpec(name="prot-save", root=root, entrypoint=f"/bin/{GUEST}",
                         args=("saved",), env=(), vcpus=1, memory_bytes=64 << 20,
                         upper=tmp_path / "upper", cwd="/")
    state = tmp_path / "prot.state"
    machine = Machine(spec, BufferConsole(b""))

    def save(m: Machine) -> None:
        m.pause()
        m.save_state(state)
        m.end_saved()

    _when_ready(machine, save)
    assert machine.run().saved
    console = BufferConsole(b"")
    status = Machine.restore(spec, console, state).run()
    assert status.exit_code == 0, status
    assert bytes(console.stdout) == b"store after restore: sig 11 accerr 1\n"


def test_memory_keeps_permissions_across_clone_and_layout() -> None:
    mem = GuestMemory(0x400000, 0x410000, 16 << 20, 64)
    try:
        addr = mem.mmap_anon(8 * PAGE)
        assert addr is not None
        assert mem.protect(addr, PAGE, 1) and mem.protect(addr + 2 * PAGE, PAGE, 5)
        ranges = mem.perm_ranges
        assert [(lo - addr, hi - addr) for lo, hi, _ in ranges] == [(0, PAGE),
                                                                   (2 * PAGE, 3 * PAGE)]
        assert mem.exec_ranges == [(addr + 2 * PAGE, addr + 3 * PAGE)]
        assert mem.layout()["perm_ranges"] == ranges
        child = mem.clone()
        try:
            assert child.perm_ranges == ranges
            regions = {(a, n): p for a, n, p, _ in child.unicorn_regions()}
            assert regions[(addr, PAGE)] == 1                  # UC_PROT_READ
            assert regions[(addr + PAGE, PAGE)] == 3           # read-write between
        finally:
            child.close()
        assert mem.munmap(addr, 8 * PAGE) and mem.perm_ranges == []
        # The change log is emptied when long: vCPUs then map the permissions afresh.
        epoch = mem.exec_since((0, 0))[1][0]
        for i in range(8 * MAX_PROT_RANGES + 8):
            mem.protect(mem.image_end + (i % 4) * PAGE, PAGE, 1 if (i // 4) % 2 else 3)
        changes, seen, _ = mem.exec_since((epoch, 0))
        assert changes is None and seen[0] > epoch
    finally:
        mem.close()
