"""Halting every vCPU when a partition ends must never touch a Unicorn instance that an idle
vCPU has already closed.

Found as a SIGSEGV of the whole test process (one full run in three): a fork's child exited
on one vCPU, the machine dropped that address space's instance from the now idle vCPU
(``Vcpu.drop_space`` closes it), and the parent's exit_group then halted every vCPU
(``Machine._halt_all``); ``halt`` called ``emu_stop`` through ``self.uc``, which still named
the closed instance, and unicorn read freed memory. Checked here on a vCPU in exactly that
state, with instances that record what is asked of them (a real closed instance would make
the failure a crash of the test process rather than an assertion)."""

from __future__ import annotations

from typing import Any

from node_agent.runtime.vcpu import Vcpu, _Space


class Instance:
    def __init__(self) -> None:
        self.stops = 0

    def emu_stop(self) -> None:
        self.stops += 1


def idle_vcpu(current: Any, named: Instance) -> Vcpu:
    vcpu = Vcpu.__new__(Vcpu)   # only what halt() reads: no machine, no guest
    vcpu._space = _Space(None, current)  # type: ignore[arg-type]
    vcpu.uc = named
    vcpu.stop_why = ""
    return vcpu


def test_halt_leaves_an_instance_the_vcpu_dropped_alone() -> None:
    closed = Instance()
    vcpu = idle_vcpu(None, closed)   # drop_space: bound to nothing, uc names the closed one
    vcpu.halt()
    assert closed.stops == 0
    assert vcpu.stop_why == "halt"


def test_halt_stops_the_instance_the_vcpu_is_bound_to() -> None:
    live = Instance()
    vcpu = idle_vcpu(live, live)
    vcpu.halt()
    assert live.stops == 1
