"""Floating-point exception flags survive a signal handler that raises its own.

The rest of tests/guests/fpu_flags.c is compared with qemu-user in test_vs_qemu.py; this
case is not, because qemu-i386 7.2 loses the x87 flags across a signal handler while Linux
keeps them (the expected lines are Linux's output on x86_64 hardware). It goes through the
runtime's fxsave image (uc_reg_read/uc_reg_write of FPSW and MXCSR), which must see the
flags the patched unicorn accumulates (docs/unicorn-patch.md, fpexcept).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from runtime_helpers import Run

LINUX = {
    "x86_64": b"after signal handler   fe=P     x87=0000 sse=0x20\n",
    "i386": b"after signal handler   fe=P     x87=0x20 sse=0000\n",
}


@pytest.mark.parametrize("arch", sorted(LINUX))
def test_flags_survive_a_signal_handler(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("fpu_flags", "signal", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == LINUX[arch]
