"""Unmasked floating-point exceptions trap as on Linux (docs/unicorn-patch.md, fptrap).

tests/guests/fp_traps.c unmasks each exception with feenableexcept() and divides with an
SSE divsd (#XM at the instruction, xmm0 not written) and an x87 fdiv (#MF at the next
waiting instruction); the handler prints the signal, si_code, whether si_addr and the
saved ip are the expected instruction and whether xmm0 kept its value. It also checks a
flag raised while masked and unmasked later, and fedisableexcept. The same binary runs
natively: the output must be identical. Without a handler the trap kills the process with
SIGFPE natively; pid 1 killed by a CPU fault fails the partition (docs/processes.md).
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable

import pytest
from runtime_helpers import GuestBuilder, Run

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "i686", "i386"),
                                reason="the reference is a native run")


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_unmasked_exceptions_raise_sigfpe_as_natively(
        guest: GuestBuilder, run_guest: Callable[..., Run], arch: str) -> None:
    native = subprocess.run([guest("fp_traps", arch)], capture_output=True, timeout=60)
    assert native.returncode == 0, native.stderr
    assert b"signal 8 si_code 3 addr ok ip ok xmm0 kept" in native.stdout
    run = run_guest("fp_traps", arch=arch)
    assert run.status.exit_code == 0, (run.status, run.stderr)
    assert run.stdout.decode() == native.stdout.decode()


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
@pytest.mark.parametrize("unit", ["sse", "x87"])
def test_unmasked_exception_without_handler_kills(
        guest: GuestBuilder, run_guest: Callable[..., Run], arch: str, unit: str) -> None:
    native = subprocess.run([guest("fp_traps", arch), unit], capture_output=True, timeout=60)
    assert native.returncode == -8 and native.stdout == b""
    run = run_guest("fp_traps", unit, arch=arch)
    assert run.status.exit_code is None and run.stdout == b""
    what = "SIMD floating-point error" if unit == "sse" else "x87 floating-point error"
    assert what in (run.status.failed_reason or ""), run.status
