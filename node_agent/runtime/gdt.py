"""Segment descriptors: the flat GDT a partition starts with, and i386 TLS entries.

Guests run at CPL 3 like a Linux process: the first thread starts at CPL 0 on the boot page,
whose single ``iret`` loads the user code and stack segments below (RPL 3) and jumps to the
ELF entry point. From then on the privileged instructions (cli/sti, hlt, lgdt, mov to/from
CR*, rdmsr/wrmsr, invlpg, ...) raise a general protection fault, as for a Linux process.
Every descriptor has its accessed bit set, so the CPU never writes to a GDT and the GDTs can
be mapped read-only to the guest (it cannot forge a descriptor that leads back to CPL 0).
Selectors follow the x86_64 kernel's (what a 32-bit process sees there too).
"""

from __future__ import annotations

import struct

__all__ = ["GDT_SIZE", "KERNEL_DS_SELECTOR", "USER_DS_SELECTOR", "USER_CS_SELECTOR",
           "USER32_CS_SELECTOR", "TLS_MIN", "TLS_MAX", "descriptor", "flat_gdt",
           "user_desc_to_descriptor", "boot_frame", "IRET64", "IRET32", "SIGRETURN32_OFFSET",
           "RT_SIGRETURN32_OFFSET"]

GDT_SIZE = 0x100          # 32 entries
KERNEL_DS_ENTRY = 2       # the stack segment of the boot page's iret (CPL 0)
USER32_CS_ENTRY = 4       # 32-bit user code
USER_DS_ENTRY = 5         # user data and stack
USER64_CS_ENTRY = 6       # 64-bit user code (x86_64 GDT only)
KERNEL_DS_SELECTOR = KERNEL_DS_ENTRY << 3
USER32_CS_SELECTOR = (USER32_CS_ENTRY << 3) | 3      # 0x23
USER_DS_SELECTOR = (USER_DS_ENTRY << 3) | 3          # 0x2b
USER_CS_SELECTOR = (USER64_CS_ENTRY << 3) | 3        # 0x33 (x86_64)
TLS_MIN, TLS_MAX = 6, 8                        # Linux's GDT_ENTRY_TLS_MIN..MAX (i386)
IRET64 = b"\x48\xcf"                           # iretq
IRET32 = b"\xcf"                               # iret
_ACCESSED = 0x01
_CODE_DPL3, _DATA_DPL3, _DATA_DPL0 = 0xFB, 0xF3, 0x93   # present, S, type, accessed


def descriptor(base: int, limit: int, access: int, flags: int) -> int:
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
            | (((limit >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56))


def flat_gdt(arch: str) -> bytes:
    """The GDT of a new partition: flat 4 GiB segments (64-bit code on x86_64)."""
    entries = [0] * (GDT_SIZE // 8)
    entries[KERNEL_DS_ENTRY] = descriptor(0, 0xFFFFF, _DATA_DPL0, 0xC)
    entries[USER32_CS_ENTRY] = descriptor(0, 0xFFFFF, _CODE_DPL3, 0xC)
    entries[USER_DS_ENTRY] = descriptor(0, 0xFFFFF, _DATA_DPL3, 0xC)
    if arch == "x86_64":
        entries[USER64_CS_ENTRY] = descriptor(0, 0xFFFFF, _CODE_DPL3, 0xA)   # L=1
    return struct.pack(f"<{len(entries)}Q", *entries)


#: i386 signal return trampolines on the boot page (what Linux's vDSO provides as
#: __kernel_sigreturn and __kernel_rt_sigreturn): a handler installed without SA_RESTORER
#: (signal(2), sigaction(2) from old binaries) returns through them.
SIGRETURN32_OFFSET, RT_SIGRETURN32_OFFSET = 0x100, 0x110
_SIGRETURN32 = bytes.fromhex("58b877000000cd80")     # pop eax; mov eax, 119; int 0x80
_RT_SIGRETURN32 = bytes.fromhex("b8ad000000cd80")    # mov eax, 173; int 0x80


def boot_frame(arch: str, entry: int, sp: int) -> tuple[bytes, bytes]:
    """(the boot page's code, the iret frame to place at the stack pointer) that start the
    guest at ``entry`` with stack ``sp`` at CPL 3, interrupts flag set as on Linux. The i386
    page also holds the signal return trampolines."""
    if arch == "x86_64":
        return IRET64, struct.pack("<5Q", entry, USER_CS_SELECTOR, 0x202, sp, USER_DS_SELECTOR)
    code = bytearray(IRET32.ljust(RT_SIGRETURN32_OFFSET + len(_RT_SIGRETURN32), b"\xcc"))
    code[SIGRETURN32_OFFSET:SIGRETURN32_OFFSET + len(_SIGRETURN32)] = _SIGRETURN32
    code[RT_SIGRETURN32_OFFSET:] = _RT_SIGRETURN32
    return bytes(code), struct.pack("<5I", entry, USER32_CS_SELECTOR, 0x202, sp,
                                    USER_DS_SELECTOR)


def user_desc_to_descriptor(base: int, limit: int, flags: int) -> int:
    """Encode Linux's ``struct user_desc`` flag bits as a ring-3 data descriptor."""
    seg_32bit = flags & 1
    contents = (flags >> 1) & 3
    read_exec_only = (flags >> 3) & 1
    limit_in_pages = (flags >> 4) & 1
    not_present = (flags >> 5) & 1
    useable = (flags >> 6) & 1
    if base == 0 and limit == 0 and read_exec_only and not_present:
        return 0
    access = 0x10 | (3 << 5) | (contents << 2) | (0 if read_exec_only else 2) | _ACCESSED
    if not not_present:
        access |= 0x80
    gflags = (limit_in_pages << 3) | (seg_32bit << 2) | useable
    return descriptor(base, limit & 0xFFFFF, access, gflags)
