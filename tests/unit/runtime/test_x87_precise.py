"""x87 transcendental, remainder and scaling instructions give the host CPU's bits.

tests/guests/x87_precise.c runs f2xm1, fyl2x, fyl2xp1, fptan, fpatan, fsin, fcos, fsincos,
fscale, fprem, fprem1, fxtract and frndint on a few operands each (ordinary, out of range,
zero, infinite, NaN, denormal, unnormal) under five control words (64-, 53- and 24-bit
precision, round toward zero, round up) with the condition codes preset to 0 and to 1, and
prints the 80-bit patterns of what each leaves on the stack and the whole status word. The
same binary is run natively: every line must be identical. Stock unicorn (QEMU 5.0)
computes these through a host double and libm: wrong last bits, no flags, no C1, stack
left unchanged on invalid operands (docs/unicorn-patch.md, x87precise).

Needs an x86 host (the reference is the host CPU, and the patch runs the host's x87).
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable

import pytest
from runtime_helpers import GuestBuilder, Run

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "i686", "i386"),
                                reason="the reference is the host's x87")


def _differences(here: bytes, native: bytes, limit: int = 8) -> str:
    a, b = here.decode().splitlines(), native.decode().splitlines()
    lines = [f"here:   {x}\nnative: {y}" for x, y in zip(a, b, strict=False) if x != y]
    if len(a) != len(b):
        lines.append(f"{len(a)} lines here, {len(b)} natively")
    return f"{len(lines)} lines differ, first ones:\n" + "\n".join(lines[:limit])


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_x87_results_match_the_host_cpu(guest: GuestBuilder,
                                         run_guest: Callable[..., Run], arch: str) -> None:
    native = subprocess.run([guest("x87_precise", arch)], capture_output=True, timeout=60)
    assert native.returncode == 0, native.stderr
    assert len(native.stdout.splitlines()) > 1000
    run = run_guest("x87_precise", arch=arch)
    assert run.status.exit_code == 0, (run.status, run.stderr)
    assert run.stdout == native.stdout, _differences(run.stdout, native.stdout)
