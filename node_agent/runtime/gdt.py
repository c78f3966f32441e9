"""i386 segment descriptors: a flat GDT per guest thread plus its TLS entries."""

from __future__ import annotations

import struct

__all__ = ["GDT_SIZE", "FLAT_DATA_SELECTOR", "TLS_MIN", "TLS_MAX", "descriptor",
           "flat_gdt", "user_desc_to_descriptor"]

GDT_SIZE = 0x100          # 32 entries
FLAT_CODE_ENTRY = 1
FLAT_DATA_ENTRY = 2
FLAT_DATA_SELECTOR = FLAT_DATA_ENTRY << 3      # ring 0: Unicorn runs at CPL 0
TLS_MIN, TLS_MAX = 6, 8                        # Linux's GDT_ENTRY_TLS_MIN..MAX


def descriptor(base: int, limit: int, access: int, flags: int) -> int:
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
            | (((limit >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56))


def flat_gdt() -> bytes:
    entries = [0] * (GDT_SIZE // 8)
    entries[FLAT_CODE_ENTRY] = descriptor(0, 0xFFFFF, 0x9A, 0xC)
    entries[FLAT_DATA_ENTRY] = descriptor(0, 0xFFFFF, 0x92, 0xC)
    return struct.pack(f"<{len(entries)}Q", *entries)


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
    access = 0x10 | (3 << 5) | (contents << 2) | (0 if read_exec_only else 2)
    if not not_present:
        access |= 0x80
    gflags = (limit_in_pages << 3) | (seg_32bit << 2) | useable
    return descriptor(base, limit, access, gflags)
