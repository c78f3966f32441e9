"""Guests run at CPL 3: what a Linux process may not execute faults as it would there."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from runtime_helpers import Run

ARCHES = ["x86_64", "i386"]
PRIVILEGED = ["cli", "sti", "hlt", "in", "out", "insb", "rdmsr", "wrmsr", "lgdt", "lidt",
              "rdcr0", "wrcr3", "rdcr4", "invlpg", "wbinvd", "clts", "rddr7"]
GP_FAULT = "guest fault: general protection fault at pc 0x"


@pytest.mark.parametrize("arch", ARCHES)
def test_the_guest_runs_at_cpl3(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("privileged", "cpl", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"cs=3 ss=3\n"


@pytest.mark.parametrize("arch", ARCHES)
def test_an_ordinary_run_survives(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("privileged", "none", arch=arch)
    assert (run.status.exit_code, run.stdout) == (0, b"survived none 0\n"), run.status


# swapgs exists in 64-bit mode only.
CASES = [(arch, op) for arch in ARCHES for op in PRIVILEGED] + [("x86_64", "swapgs")]


@pytest.mark.parametrize(("arch", "op"), CASES)
def test_privileged_instructions_fault(run_guest: Callable[..., Run], arch: str,
                                       op: str) -> None:
    run = run_guest("privileged", op, arch=arch)
    assert run.status.exit_code is None, (op, run.stdout)
    assert b"survived" not in run.stdout
    assert (run.status.failed_reason or "").startswith(GP_FAULT), run.status


@pytest.mark.parametrize("arch", ARCHES)
def test_the_gdt_is_read_only_to_the_guest(run_guest: Callable[..., Run], arch: str) -> None:
    """A writable GDT would let the guest forge a descriptor that leads back to CPL 0."""
    run = run_guest("privileged", "gdt-write", arch=arch)
    assert run.status.exit_code is None, run.stdout
    assert (run.status.failed_reason or "").startswith(
        "guest fault: write to read-only address"), run.status
