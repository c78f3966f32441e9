"""The syscall fast path (issue 15): a vCPU's syscall hook entered from C, not through ctypes.

``_syscall_hook.c`` (built by tools/build_syscall_hook.py, which `make venv` runs) registers
itself with ``uc_hook_add`` as a Unicorn instance's syscall and interrupt hook: it reads the
number's and the arguments' registers with one ``uc_reg_read_batch``, calls the vCPU's
``syscall_entry`` with seven ints and writes the int it returns to the result register.
That skips the binding's two Python wrapper layers and ctypes' per-call argument
conversion, which were most of a syscall's cost (docs/benchmarks.md).

``install`` returns None when the module is missing, stale (another ABI) or refused by
``VIRIDIAN_SYSCALL_FASTPATH=0``: the vCPU then registers its Python hooks through the
binding as before. A missing or broken module is reported once per process, as a warning
on stderr; the environment switch (for measurements and tests) is silent.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from .syscall_counts import OTHER

__all__ = ["ENV", "ABI", "install", "available", "unavailable_reason"]

#: set to "0" to keep the ctypes path (bench/runtime.py measures both in one run)
ENV = "VIRIDIAN_SYSCALL_FASTPATH"
#: the C module's interface version this file speaks
ABI = 2

_loaded: ModuleType | None = None
_reason: str | None = None
_tried = False


def _load() -> ModuleType | None:
    """The C module, imported once; None (and one warning) when it cannot be used."""
    global _loaded, _reason, _tried
    if _tried:
        return _loaded
    _tried = True
    try:
        from unicorn import UC_HOOK_INSN, UC_HOOK_INTR
        from unicorn.x86_const import UC_X86_INS_SYSCALL

        module = importlib.import_module(f"{__package__}._syscall_hook")
    except ImportError as exc:
        _reason = f"not built ({exc}); run `make venv` or tools/build_syscall_hook.py"
    else:
        if getattr(module, "ABI", None) != ABI:
            _reason = (f"stale build (ABI {getattr(module, 'ABI', None)}, expected {ABI}); "
                       "run tools/build_syscall_hook.py")
        elif (module.HOOK_INTR, module.HOOK_INSN, module.INS_SYSCALL) != \
                (UC_HOOK_INTR, UC_HOOK_INSN, UC_X86_INS_SYSCALL):
            _reason = "built for other unicorn constants"
        else:
            _loaded = module
    if _reason is not None:
        print(f"viridian: WARNING: syscall fast path unavailable: {_reason}; using the "
              "slower ctypes syscall path", file=sys.stderr, flush=True)
    return _loaded


def available() -> bool:
    """True when the C module is usable and not switched off by the environment."""
    return os.environ.get(ENV, "1") != "0" and _load() is not None


def unavailable_reason() -> str | None:
    """Why the C module is not used (None when it is, or before anything asked)."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0"
    _load()
    return _reason


def _address(function: Any) -> int:
    address = ctypes.cast(function, ctypes.c_void_p).value
    if not address:
        raise RuntimeError(f"no address for {function!r}")
    return int(address)


def install(uc: Any, uclib: Any, regs: Sequence[int], ret_reg: int, is64: bool,
            on_syscall: Callable[..., int | None], on_interrupt: Callable[[int], None],
            counts: memoryview, count_base: int, meter: Any) -> Any | None:
    """Register the C hooks on ``uc`` (a binding ``Uc``; ``uclib`` its loaded library):
    ``on_syscall(nr, a1..a6)`` for ``syscall`` (x86_64) or ``int 0x80`` (i386), and
    ``on_interrupt(intno)`` for every other interrupt. Each syscall is counted in
    ``counts[count_base + min(nr, OTHER)]`` and its time added to ``meter.system``. The
    hook object is kept on ``uc`` (it must live as long as the instance). None when the
    fast path is not available."""
    if not available():
        return None
    module = _loaded
    assert module is not None
    hook = module.SyscallHook(
        uc=int(uc._uch.value), hook_add=_address(uclib.uc_hook_add),
        read_batch=_address(uclib.uc_reg_read_batch), reg_write=_address(uclib.uc_reg_write),
        regs=list(regs), ret_reg=ret_reg, int80=not is64,
        mask=(1 << 64) - 1 if is64 else 0xFFFFFFFF, on_syscall=on_syscall,
        on_interrupt=on_interrupt, uc_object=uc, emu_stop=uc.emu_stop, counts=counts,
        count_base=count_base, count_other=OTHER, meter=meter)
    uc._viridian_syscall_hook = hook
    return hook
