"""Register ids of the two guest architectures, for code that must not depend on the vCPU.

A partition runs x86_64 and i386 processes side by side (an i386 program may execve an
x86_64 one, as on Linux): which ids a thread uses follows its process's address space.
"""

from __future__ import annotations

from unicorn import x86_const as X

__all__ = ["ARGS64", "ARGS32", "GPR64", "GPR32", "result_reg", "start_registers"]

#: the syscall number's register, then the six arguments' (x86_64 syscall / i386 int 0x80)
ARGS64 = (X.UC_X86_REG_RAX, X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX,
          X.UC_X86_REG_R10, X.UC_X86_REG_R8, X.UC_X86_REG_R9)
ARGS32 = (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
          X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EBP)
#: what execve clears
GPR64 = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX,
         X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_RBP, X.UC_X86_REG_R8,
         X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12,
         X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15, X.UC_X86_REG_FS_BASE,
         X.UC_X86_REG_GS_BASE)
GPR32 = (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
         X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EBP, X.UC_X86_REG_GS)


def result_reg(is64: bool) -> int:
    """Where a syscall's result goes."""
    return int(X.UC_X86_REG_RAX if is64 else X.UC_X86_REG_EAX)


def start_registers(is64: bool, pc: int, sp: int) -> dict[int, int]:
    """A new program's first registers: ``pc``, ``sp`` and every other one cleared."""
    regs = {reg: 0 for reg in (GPR64 if is64 else GPR32)}
    regs[X.UC_X86_REG_RIP if is64 else X.UC_X86_REG_EIP] = pc
    regs[X.UC_X86_REG_RSP if is64 else X.UC_X86_REG_ESP] = sp
    return regs
