"""Guest memory: one anonymous host mapping, its guest layout, brk and mmap allocation.

Layout (guest-virtual addresses; Unicorn runs with paging off)::

    base ........ image_end   the ELF's PT_LOAD segments (their own permissions)
    image_end ... brk         the brk heap, grows up
    ...           stack_low   anonymous mmap area, allocated top-down
    stack_low ... stack_top   the main thread's stack
    stack_top ... top         a reserved page block (i386 per-vCPU GDTs)

All of it is one host mapping (MAP_NORESERVE), so untouched guest memory costs nothing.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import mmap
import struct
import threading

from unicorn import UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

__all__ = ["GuestMemory", "GuestFault", "PAGE", "page_up", "page_down"]

PAGE = 0x1000
RESERVED = 0x10000
MAX_STACK = 8 << 20
I386_LIMIT = 0xFFFF0000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_NORESERVE = 0x4000
_MADV_DONTNEED = 4


class GuestFault(Exception):
    """A guest pointer passed to a syscall is outside guest memory (EFAULT)."""


def page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def page_down(n: int) -> int:
    return n & ~(PAGE - 1)


class GuestMemory:
    """The guest's whole address space, backed by one host mapping."""

    def __init__(self, base: int, image_end: int, memory_bytes: int, bits: int) -> None:
        self.base = base
        self.image_end = page_up(image_end)
        size = page_up(self.image_end - base + memory_bytes) + RESERVED
        if bits == 32 and base + size > I386_LIMIT:
            size = I386_LIMIT - base
        self.size = size
        self.top = base + size
        self.stack_top = self.top - RESERVED
        stack = min(MAX_STACK, page_down(memory_bytes // 4))
        self.stack_low = self.stack_top - stack
        if self.stack_low <= self.image_end + PAGE:
            raise MemoryError("partition memory too small for the image")
        self.reserved = self.stack_top
        self.brk_start = self.image_end
        self.brk = self.image_end
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        host = _libc.mmap(None, size, prot, flags, -1, 0)
        if host is None or host == ctypes.c_void_p(-1).value:
            raise MemoryError(f"cannot reserve {size} bytes of guest memory")
        self.host: int = host
        self.view = memoryview((ctypes.c_ubyte * size).from_address(host)).cast("B")
        self.lock = threading.Lock()
        # Sorted, non-overlapping [start, end) of anonymous mmap allocations.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.exec_generation = 0
        self.exec_ranges: list[tuple[int, int]] = []
        self.image_perms: list[tuple[int, int, int]] = []

    # -- host/guest access -------------------------------------------------
    def _off(self, addr: int, n: int) -> int:
        off = addr - self.base
        if off < 0 or n < 0 or off + n > self.size:
            raise GuestFault(f"bad guest pointer 0x{addr:x}+{n}")
        return off

    def read(self, addr: int, n: int) -> bytes:
        off = self._off(addr, n)
        return bytes(self.view[off:off + n])

    def write(self, addr: int, data: bytes) -> None:
        off = self._off(addr, len(data))
        self.view[off:off + len(data)] = data

    def read_cstr(self, addr: int, limit: int = 4096) -> bytes:
        off = self._off(addr, 1)
        end = min(self.size, off + limit)
        chunk = self.view[off:end]
        idx = bytes(chunk).find(b"\0")
        if idx < 0:
            raise GuestFault(f"unterminated string at 0x{addr:x}")
        return bytes(chunk[:idx])

    def u32(self, addr: int) -> int:
        return int(struct.unpack("<I", self.read(addr, 4))[0])

    def u64(self, addr: int) -> int:
        return int(struct.unpack("<Q", self.read(addr, 8))[0])

    def put_u32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value & 0xFFFFFFFF))

    def put_u64(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def zero(self, addr: int, n: int) -> None:
        """Give [addr, addr+n) back to the host as zero pages (whole pages only)."""
        off = self._off(addr, n)
        lo, hi = page_up(off), page_down(off + n)
        if hi > lo:
            _libc.madvise(self.host + lo, hi - lo, _MADV_DONTNEED)
        if lo > off:
            self.view[off:min(lo, off + n)] = bytes(min(lo, off + n) - off)
        if hi >= lo and off + n > hi:
            self.view[hi:off + n] = bytes(off + n - hi)

    # -- Unicorn mappings --------------------------------------------------
    def unicorn_regions(self) -> list[tuple[int, int, int, int]]:
        """(guest address, size, UC_PROT perms, host pointer) covering the whole space."""
        out: list[tuple[int, int, int, int]] = []
        cursor = self.base
        for start, end, perms in self.image_perms:
            if start > cursor:
                out.append((cursor, start - cursor, UC_PROT_READ, self.host + cursor - self.base))
            out.append((start, end - start, perms, self.host + start - self.base))
            cursor = end
        rw = UC_PROT_READ | UC_PROT_WRITE
        out.append((cursor, self.top - cursor, rw, self.host + cursor - self.base))
        return out

    def set_image_perms(self, pages: dict[int, int]) -> None:
        """Record per-page permissions of the loaded image, coalesced into ranges."""
        ranges: list[tuple[int, int, int]] = []
        for page in sorted(pages):
            perms = pages[page]
            if ranges and ranges[-1][1] == page and ranges[-1][2] == perms:
                ranges[-1] = (ranges[-1][0], page + PAGE, perms)
            else:
                ranges.append((page, page + PAGE, perms))
        self.image_perms = ranges

    def make_executable(self, addr: int, length: int) -> None:
        """Ask every vCPU to map [addr, addr+length) executable at its next syscall."""
        lo, hi = page_down(addr), page_up(addr + length)
        if lo < self.base or hi > self.top or hi <= lo:
            return
        with self.lock:
            self.exec_ranges.append((lo, hi))
            self.exec_generation += 1

    # -- brk / mmap ------------------------------------------------------------
    def _lowest_mmap(self) -> int:
        return self._starts[0] if self._starts else self.stack_low

    def set_brk(self, new: int) -> int:
        with self.lock:
            if new == 0 or new < self.brk_start:
                return self.brk
            if page_up(new) > self._lowest_mmap() - PAGE:
                return self.brk
            old = self.brk
            if new < old:
                self.zero(page_up(new), max(0, page_up(old) - page_up(new)))
            self.brk = new
            return new

    def mmap_anon(self, length: int, fixed: int | None = None) -> int | None:
        """Allocate (or claim, for MAP_FIXED) zeroed pages; None when out of memory."""
        length = page_up(length)
        if length <= 0:
            return None
        with self.lock:
            if fixed is not None:
                if fixed < page_up(self.brk) or fixed + length > self.stack_low:
                    return None
                self._insert(fixed, fixed + length)
                self.zero(fixed, length)
                return fixed
            hi = self.stack_low
            for i in range(len(self._starts) - 1, -2, -1):
                lo = self._ends[i] if i >= 0 else page_up(self.brk) + PAGE
                if hi - lo >= length:
                    addr = hi - length
                    self._insert(addr, addr + length)
                    return addr
                if i >= 0:
                    hi = self._starts[i]
            return None

    def munmap(self, addr: int, length: int) -> bool:
        addr, end = page_down(addr), page_up(addr + length)
        with self.lock:
            # Zero before the range can be handed out again: zeroing after the lock let a
            # concurrent mmap (another guest thread's stack, a malloc arena) get the range,
            # write to it and then lose what it wrote.
            if self._remove(addr, end):
                self.zero(addr, end - addr)
        return True

    def is_mapped(self, addr: int, length: int) -> bool:
        with self.lock:
            i = bisect.bisect_right(self._starts, addr) - 1
            return i >= 0 and self._ends[i] >= addr + length

    def resize(self, addr: int, old: int, new: int) -> int | None:
        """Grow or shrink an mmap allocation in place; None if it cannot grow in place."""
        old, new = page_up(old), page_up(new)
        if new <= old:
            self.munmap(addr + new, old - new)
            return addr
        with self.lock:
            i = bisect.bisect_right(self._starts, addr) - 1
            if i < 0 or self._ends[i] != addr + old:
                return None
            limit = self._starts[i + 1] if i + 1 < len(self._starts) else self.stack_low
            if addr + new > limit:
                return None
            self._ends[i] = addr + new
            self._merge()
            return addr

    def _insert(self, lo: int, hi: int) -> None:
        self._remove(lo, hi)
        i = bisect.bisect_left(self._starts, lo)
        self._starts.insert(i, lo)
        self._ends.insert(i, hi)
        self._merge()

    def _merge(self) -> None:
        starts: list[int] = []
        ends: list[int] = []
        for s, e in zip(self._starts, self._ends, strict=True):
            if starts and s <= ends[-1]:
                ends[-1] = max(ends[-1], e)
            else:
                starts.append(s)
                ends.append(e)
        self._starts, self._ends = starts, ends

    def _remove(self, lo: int, hi: int) -> bool:
        starts: list[int] = []
        ends: list[int] = []
        changed = False
        for s, e in zip(self._starts, self._ends, strict=True):
            if e <= lo or s >= hi:
                starts.append(s)
                ends.append(e)
                continue
            changed = True
            if s < lo:
                starts.append(s)
                ends.append(lo)
            if e > hi:
                starts.append(hi)
                ends.append(e)
        self._starts, self._ends = starts, ends
        return changed

    def close(self) -> None:
        self.view.release()
        _libc.munmap(self.host, self.size)


def uc_perms(readable: bool, writable: bool, executable: bool) -> int:
    perms = UC_PROT_READ if readable or writable or executable else 0
    if writable:
        perms |= UC_PROT_WRITE
    if executable:
        perms |= UC_PROT_EXEC
    return perms
