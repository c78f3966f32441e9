"""Minimal unicorn harness for measuring guest speed (tools/ucbench, measurement only).

Runs a static, libc-free x86-64 ELF (see sieve.c): PT_LOAD segments mapped with their
own permissions (code R-X, data RW-), a RW- stack, write(2) and exit_group(2) handled.
Usage: python tools/ucbench/run.py ELF  (LIBUNICORN_PATH=dir selects another libunicorn)
"""

from __future__ import annotations

import sys
import time

from elftools.elf.elffile import ELFFile
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_MODE_64,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
)
from unicorn.x86_const import (
    UC_X86_INS_SYSCALL,
    UC_X86_REG_RAX,
    UC_X86_REG_RDI,
    UC_X86_REG_RDX,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
)

PAGE = 0x1000
STACK_TOP = 0x7FFF0000
STACK_SIZE = 1 << 20


def main(path: str) -> int:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    with open(path, "rb") as f:
        elf = ELFFile(f)
        entry = elf.header.e_entry
        for seg in elf.iter_segments("PT_LOAD"):
            flags = seg["p_flags"]
            perms = (UC_PROT_READ if flags & 4 else 0) | (UC_PROT_WRITE if flags & 2 else 0)
            perms |= UC_PROT_EXEC if flags & 1 else 0
            start = seg["p_vaddr"] & ~(PAGE - 1)
            end = (seg["p_vaddr"] + seg["p_memsz"] + PAGE - 1) & ~(PAGE - 1)
            uc.mem_map(start, end - start, perms)
            uc.mem_write(seg["p_vaddr"], seg.data())
    uc.mem_map(STACK_TOP - STACK_SIZE, STACK_SIZE, UC_PROT_READ | UC_PROT_WRITE)
    uc.reg_write(UC_X86_REG_RSP, STACK_TOP - 64)
    exit_code: list[int] = []

    def on_syscall(uc: Uc, _user: object) -> None:
        nr = uc.reg_read(UC_X86_REG_RAX)
        if nr == 1:
            buf = uc.mem_read(uc.reg_read(UC_X86_REG_RSI), uc.reg_read(UC_X86_REG_RDX))
            sys.stdout.write(bytes(buf).decode())
            uc.reg_write(UC_X86_REG_RAX, len(buf))
        elif nr in (60, 231):
            exit_code.append(uc.reg_read(UC_X86_REG_RDI))
            uc.emu_stop()
        else:
            uc.reg_write(UC_X86_REG_RAX, -38 & (2**64 - 1))

    uc.hook_add(UC_HOOK_INSN, on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
    t0 = time.perf_counter()
    uc.emu_start(entry, 0)
    print(f"emulated in {time.perf_counter() - t0:.3f}s", file=sys.stderr)
    return exit_code[0] if exit_code else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
