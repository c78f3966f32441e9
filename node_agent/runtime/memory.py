"""Guest memory: one anonymous host mapping, its guest layout, brk and mmap allocation.

Layout (guest-virtual addresses; Unicorn runs with paging off)::

    base ........ image_end   the ELF's PT_LOAD segments and bss (their own permissions)
    image_end ... brk         the brk heap, grows up
    ...           gap_low     anonymous and file mmap area, allocated top-down
    gap_low ..... stack_low   the stack guard gap: never mapped in Unicorn, EFAULT for syscalls
    stack_low ... stack_top   the main thread's stack
    stack_top ... boot        GDT_AREA: i386 per-thread GDTs, the x86_64 GDT (guest: read-only)
    boot ........ top         the boot page: the iret that starts the guest at CPL 3 (R-X)

All of it is one host mapping (MAP_NORESERVE), so untouched guest memory costs nothing.

**Copy-on-write fork.** The mapping is a MAP_SHARED view of a memfd sized like it. The first
fork *freezes* that memfd: the parent's view becomes MAP_PRIVATE over it (same host
addresses, same contents) and the child maps it MAP_PRIVATE too, so the kernel copies a page
only when one of them writes it; nothing is copied at the fork itself. A frozen memfd never
changes again: zeroing a range of a frozen address space maps fresh anonymous pages there
(``_anon``). A later fork of the same process copies only what it wrote since it froze
(its private pages, found with /proc/self/pagemap) and its anonymous and file-backed ranges.

**The memory bound.** ``memory_bytes`` pays for everything the guest can touch: the image's
segments and bss, the heap, every mmap and the stack. The guard gap is address space only
(nothing can touch it), so the host memory a guest can make this mapping use is at most
``memory_bytes`` rounded up to a page plus ``RESERVED`` (68 KiB: the GDTs and the boot page,
written by the runtime only) — ``ALLOWANCE`` below. An image whose segments leave no room for
the stack and one page of heap does not start (GuestMemory raises MemoryError; the partition
fails with "cannot start: ...", where Linux's execve would return ENOMEM to its caller).

**File mappings** are host mappings of the file itself (MAP_PRIVATE | MAP_FIXED over the
guest range), so pages are read from the file only when touched, and they are inside this
mapping (bounded and counted like any guest page). Only whole pages that exist in the file
when it is mapped come from it; pages past its end stay anonymous zero pages (Linux would
raise SIGBUS on touching them). A guest that shrinks a mapped file and then touches the lost
pages gets SIGBUS as on Linux, here for the whole worker process ("worker died: signal 7").
Unmapping, MAP_FIXED over, or brk over such a range puts anonymous memory back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import re
import struct
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from unicorn import UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

from . import vmas
from .ranges import RangeSet

__all__ = ["GuestMemory", "GuestFault", "PAGE", "page_up", "page_down", "RESERVED",
           "GDT_AREA", "STACK_GUARD_GAP", "ALLOWANCE", "MAX_MAPPINGS", "MAX_PROT_RANGES",
           "MAX_UC_REGIONS", "format_size"]

PAGE = 0x1000
GDT_AREA = 0x10000                  # 256 GDTs of 256 bytes
BOOT_PAGE = PAGE
RESERVED = GDT_AREA + BOOT_PAGE
#: Linux's default stack_guard_gap (256 pages) below the main stack.
STACK_GUARD_GAP = 256 * PAGE
#: How far touched guest memory may exceed memory_bytes: the reserved block + page rounding.
ALLOWANCE = RESERVED + PAGE
MAX_STACK = 8 << 20
I386_LIMIT = 0xFFFF0000
X86_64_LIMIT = 1 << 47
#: Caps on guest-controlled bookkeeping (Linux: vm.max_map_count = 65530 mappings).
MAX_MAPPINGS = 65530
MAX_FILE_MAPPINGS = 4096            # each costs up to 3 host mappings in this process
#: Ranges whose permissions differ from read-write (mprotect, mmap's prot, executable pages):
#: unicorn's mem_protect costs O(regions) and it never merges regions (a protect at 1000
#: regions takes ~40 ms, mapping 1000 regions ~1 s), so they are capped. Past the cap a change
#: that only takes permissions away is not enforced (the range keeps its wider permissions,
#: as before protections were enforced) and one that adds any gives ENOMEM.
MAX_EXEC_RANGES = 256
MAX_PROT_RANGES = MAX_EXEC_RANGES
#: A vCPU's Unicorn instance whose regions pass this is rebuilt from the current
#: permissions (vcpu.py): every applied change splits up to two more regions.
MAX_UC_REGIONS = 3 * MAX_PROT_RANGES
_RW = UC_PROT_READ | UC_PROT_WRITE
_ALL = UC_PROT_READ | UC_PROT_WRITE | UC_PROT_EXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MS_SYNC = 4
_MAP_NORESERVE = 0x4000
_MAP_FIXED = 0x10
_MADV_DONTNEED = 4
_MADV_POPULATE_READ = 22
_MAP_FAILED = ctypes.c_void_p(-1).value
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
_SHARED = mmap.MAP_SHARED | _MAP_NORESERVE
_PRIVATE = mmap.MAP_PRIVATE
_PUNCH_HOLE = 0x02 | 0x01                 # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_MADV_REMOVE = 9


class GuestFault(Exception):
    """A guest pointer passed to a syscall is outside guest memory (EFAULT)."""


def page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def page_down(n: int) -> int:
    return n & ~(PAGE - 1)


def format_size(n: int) -> str:
    """1.7Gi, 16Mi, 12Ki: how sizes are written to users."""
    for unit, shift in (("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"


class GuestMemory:
    """The guest's whole address space, backed by one host mapping."""

    def __init__(self, base: int, image_end: int, memory_bytes: int, bits: int) -> None:
        self.base = base
        self.uid = 0                        # futex key space (the process table numbers them)
        self.memory_bytes = memory_bytes
        self.bits = bits
        self.image_end = page_up(image_end)
        size = page_up(memory_bytes) + STACK_GUARD_GAP + RESERVED
        limit = I386_LIMIT if bits == 32 else X86_64_LIMIT
        if base + size > limit:             # the user address space ends first
            size = page_down(limit - base)
        self.size = size
        self.top = base + size
        self.boot = self.top - BOOT_PAGE
        self.stack_top = self.top - RESERVED
        self.reserved = self.stack_top
        stack = min(MAX_STACK, page_down(memory_bytes // 4))
        self.stack_low = self.stack_top - stack
        self.gap_low = self.stack_low - STACK_GUARD_GAP
        if self.gap_low < self.image_end + PAGE:
            raise MemoryError(
                f"the image's segments and bss need {format_size(self.image_end - base)}; "
                f"the partition's {format_size(memory_bytes)} leave "
                f"{format_size(max(0, self.gap_low - PAGE - base))} beside its "
                f"{format_size(stack)} stack")
        self.brk_start = self.image_end
        self.brk = self.image_end
        self._memfd = os.memfd_create("viridian-guest", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._memfd, size)
            host = _libc.mmap(None, size, _PROT_RW, _SHARED, self._memfd, 0)
        except OSError:
            host = None
        if host is None or host == _MAP_FAILED:
            os.close(self._memfd)
            raise MemoryError(f"cannot reserve {format_size(size)} of guest memory")
        self.host: int = host
        self._frozen = False                         # the memfd is shared with a fork
        #: MAP_SHARED file ranges: [lo, hi, host fd (our own dup), file offset of lo]
        self._shared: list[list[int]] = []
        self._anon = RangeSet(MAX_MAPPINGS)          # frozen: ranges on fresh anonymous pages
        self.view = memoryview((ctypes.c_ubyte * size).from_address(host)).cast("B")
        self.lock = threading.Lock()
        self._alloc = RangeSet(MAX_MAPPINGS)         # mmap allocations
        self._files = RangeSet(MAX_FILE_MAPPINGS)    # host file mappings inside them
        # Heap, mmap area and stack ranges whose permissions are not read-write (UC_PROT
        # bits): sorted, disjoint, at most MAX_PROT_RANGES (``protect``).
        self._perms: list[tuple[int, int, int]] = []
        # What vCPUs still have to mem_protect: (lo, hi, perms) in the order they changed.
        # Emptied when long (a new epoch: vCPUs rebuild their instance from ``_perms``).
        self._exec_log: list[tuple[int, int, int]] = []
        self._exec_epoch = 0
        self.exec_generation = 0
        self.image_perms: list[tuple[int, int, int]] = []

    # -- bookkeeping the state file saves (snapshot.py reads and assigns these) ------------
    @property
    def _starts(self) -> list[int]:
        return self._alloc.starts

    @_starts.setter
    def _starts(self, value: list[int]) -> None:
        self._alloc.starts = [int(v) for v in value]

    @property
    def _ends(self) -> list[int]:
        return self._alloc.ends

    @_ends.setter
    def _ends(self, value: list[int]) -> None:
        self._alloc.ends = [int(v) for v in value]

    @property
    def exec_ranges(self) -> list[tuple[int, int]]:
        """The executable ranges of the heap, mmap area and stack (coalesced)."""
        out: list[tuple[int, int]] = []
        for lo, hi, perms in self._perms:
            if perms & UC_PROT_EXEC:
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
        return out

    @exec_ranges.setter
    def exec_ranges(self, value: list[tuple[int, int]]) -> None:
        """Load executable (read-write-execute) ranges: a saved state's."""
        self.perm_ranges = [(int(lo), int(hi), _ALL) for lo, hi in value]

    @property
    def perm_ranges(self) -> list[tuple[int, int, int]]:
        """Every range whose permissions are not read-write, with its UC_PROT bits."""
        return list(self._perms)

    @perm_ranges.setter
    def perm_ranges(self, value: list[tuple[int, int, int]]) -> None:
        ranges = sorted((int(lo), int(hi), int(p) & _ALL) for lo, hi, p in value)
        merged: list[tuple[int, int, int]] = []
        for lo, hi, perms in ranges:
            if hi <= lo or perms == _RW or (merged and lo < merged[-1][1]):
                continue
            merged.append((lo, hi, perms))
        self._perms = merged[:MAX_PROT_RANGES]
        self._exec_log = []
        self._exec_epoch += 1
        self.exec_generation += 1

    def exec_since(self, seen: tuple[int, int]) -> tuple[list[tuple[int, int, int]] | None,
                                                         tuple[int, int], int]:
        """(changes to mem_protect, the new ``seen`` mark, generation) for a vCPU that
        applied the log up to ``seen`` = (epoch, index); None instead of the changes when
        the log was emptied since: the vCPU maps the current permissions afresh."""
        with self.lock:
            epoch, index = seen
            changes = None if epoch != self._exec_epoch else self._exec_log[index:]
            return changes, (self._exec_epoch, len(self._exec_log)), self.exec_generation

    def futex_key(self, addr: int) -> int:
        """The scheduler's key for a futex at ``addr`` of this address space: the address
        itself for the first address space (saved states keep plain addresses), above the
        user address range for the others, so processes never wake each other's waiters."""
        return addr | (self.uid << 48)

    # -- guest pointers (syscall arguments) ------------------------------------------------
    def _off(self, addr: int, n: int) -> int:
        """Offset of a guest range in the mapping; GuestFault outside what the guest may
        address through a syscall: below base, the guard gap, the reserved block."""
        off = addr - self.base
        if off < 0 or n < 0 or addr + n > self.stack_top or \
                (addr < self.stack_low and addr + n > self.gap_low):
            raise GuestFault(f"bad guest pointer 0x{addr:x}+{n}")
        return off

    def read(self, addr: int, n: int) -> bytes:
        off = addr - self.base                  # _off's check, inlined: every write reads
        if off < 0 or n < 0 or addr + n > self.stack_top or \
                (addr < self.stack_low and addr + n > self.gap_low):
            raise GuestFault(f"bad guest pointer 0x{addr:x}+{n}")
        return self.view[off:off + n].tobytes()

    def write(self, addr: int, data: bytes) -> None:
        off = self._off(addr, len(data))
        self.view[off:off + len(data)] = data

    def read_cstr(self, addr: int, limit: int = 4096) -> bytes:
        off = self._off(addr, 1)
        end = self.gap_low if addr < self.gap_low else self.stack_top
        chunk = self.view[off:min(end - self.base, off + limit)]
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

    def copy(self, dst: int, src: int, n: int) -> None:
        """Copy guest memory to guest memory without a host-side buffer (mremap)."""
        doff, soff = self._off(dst, n), self._off(src, n)
        ctypes.memmove(self.host + doff, self.host + soff, n)

    # -- the runtime's own access (loader, GDTs, boot page) ---------------------------------
    def host_view(self, addr: int, n: int) -> memoryview:
        """A writable view of [addr, addr+n) anywhere in the mapping (not for guest pointers)."""
        off = addr - self.base
        if off < 0 or n < 0 or off + n > self.size:
            raise GuestFault(f"bad runtime address 0x{addr:x}+{n}")
        return self.view[off:off + n]

    def host_read(self, addr: int, n: int) -> bytes:
        return bytes(self.host_view(addr, n))

    def host_write(self, addr: int, data: bytes) -> None:
        self.host_view(addr, len(data))[:] = data

    # -- zeroing and discarding --------------------------------------------------------------
    def zero(self, addr: int, n: int) -> None:
        """Give [addr, addr+n) back as zero pages: file-backed pages become anonymous again,
        the rest is returned to the host (whole pages; partial pages are cleared)."""
        off = addr - self.base
        if off < 0 or n < 0 or off + n > self.size:
            raise GuestFault(f"bad runtime address 0x{addr:x}+{n}")
        lo, hi = page_up(off), page_down(off + n)
        if hi > lo:
            if self._frozen:
                self._fresh(self.base + lo, hi - lo)
            else:
                for flo, fhi in self._files.intersecting(self.base + lo, self.base + hi):
                    self._anonymous(flo, fhi - flo)
                self._forget_files(self.base + lo, self.base + hi)
                self._punch(lo, hi - lo)
        if lo > off:
            self.view[off:min(lo, off + n)] = bytes(min(lo, off + n) - off)
        if hi >= lo and off + n > hi:
            self.view[hi:off + n] = bytes(off + n - hi)

    def _anonymous(self, addr: int, n: int) -> None:
        """Replace a file-backed range with zero pages of the guest's own memory (same host
        addresses): the memfd's, or fresh anonymous ones once it is frozen."""
        if self._frozen:
            self._fresh(addr, n)
            return
        off = addr - self.base
        self._remap(addr, n, _SHARED | _MAP_FIXED, self._memfd, off, "replace a file mapping")
        self._punch(off, n)

    def _fresh(self, addr: int, n: int) -> None:
        """Frozen: fresh anonymous zero pages over [addr, addr+n) (file mappings included)."""
        self._remap(addr, n, _ANON | _MAP_FIXED, -1, 0, "zero memory")
        self._forget_files(addr, addr + n)
        if not self._anon.add(addr, addr + n):
            raise MemoryError("too many separate zeroed ranges after fork")

    def _forget_files(self, lo: int, hi: int) -> None:
        """[lo, hi) is no longer file-backed: drop it from the file and shared records."""
        self._files.remove(lo, hi)
        kept: list[list[int]] = []
        for slo, shi, fd, off in self._shared:
            if shi <= lo or slo >= hi:
                kept.append([slo, shi, fd, off])
                continue
            if slo < lo:
                kept.append([slo, lo, os.dup(fd), off])
            if shi > hi:
                kept.append([hi, shi, os.dup(fd), off + hi - slo])
            os.close(fd)
        self._shared = kept

    def shared_ranges(self) -> list[tuple[int, int]]:
        """Guest ranges mapped MAP_SHARED from a file (writes reach the file)."""
        with self.lock:
            return [(lo, hi) for lo, hi, _, _ in self._shared]

    def shared_files(self) -> list[tuple[int, int, int, str]]:
        """(lo, hi, file offset, the mapped file's host path now) of every MAP_SHARED file
        range, for a saved state; the path is "" once the file has no name left."""
        with self.lock:
            out = []
            for lo, hi, fd, off in self._shared:
                try:
                    path = "" if os.fstat(fd).st_nlink == 0 else \
                        os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    path = ""
                out.append((lo, hi, off, path))
            return out

    def map_shared_file(self, lo: int, hi: int, fd: int, offset: int) -> bool:
        """A restore: map [lo, hi) MAP_SHARED from ``fd`` at ``offset`` again, over the
        saved pages (which are the file's). False when the range or offset is not one a
        mapping can have (the pages then stay ordinary memory)."""
        if lo % PAGE or hi % PAGE or offset % PAGE or offset < 0 or \
                not page_up(self.brk) <= lo < hi <= self.gap_low:
            return False
        with self.lock:
            if not self._alloc.covers(lo, hi):
                return False
            self.zero(lo, hi - lo)
            return self._map_file(lo, hi - lo, fd, offset, shared=True)

    def msync(self, addr: int, length: int) -> bool:
        """msync: flush the MAP_SHARED file pages of [addr, addr+length); False (ENOMEM)
        when part of the range is not mapped."""
        lo, hi = page_down(addr), page_up(addr + length)
        with self.lock:
            if not (self._alloc.covers(lo, hi) or
                    (lo >= self.base and hi <= page_up(self.brk))):
                return False
            for slo, shi, _, _ in self._shared:
                a, b = max(lo, slo), min(hi, shi)
                if b > a:
                    _libc.msync(self.host + a - self.base, b - a, _MS_SYNC)
        return True

    def _remap(self, addr: int, n: int, flags: int, fd: int, offset: int, what: str) -> None:
        at = self.host + addr - self.base
        if _libc.mmap(at, n, _PROT_RW, flags, fd, offset) != at:
            # A hole in the guest mapping would crash the worker: end the partition instead.
            raise MemoryError(f"cannot {what}: {os.strerror(ctypes.get_errno())}")

    def _punch(self, off: int, n: int) -> None:
        """Unfrozen: give [off, off+n) of the memfd back as zero pages (hole punching)."""
        if _libc.fallocate(self._memfd, _PUNCH_HOLE, off, n) != 0:
            _libc.madvise(self.host + off, n, _MADV_REMOVE)

    def discard(self, addr: int, n: int) -> None:
        """MADV_DONTNEED as Linux does it: anonymous pages read back as zero, pages of a file
        mapping read back from the file."""
        off = self._off(addr, n)
        lo, hi = page_down(off), page_up(off + n)
        if hi <= lo:
            return
        with self.lock:
            glo, ghi = self.base + lo, self.base + hi
            files = self._files.intersecting(glo, ghi)
            for flo, fhi in files:                       # back to the file's data
                _libc.madvise(self.host + flo - self.base, fhi - flo, _MADV_DONTNEED)
            rest = RangeSet(MAX_MAPPINGS)
            rest.load(files)
            for plo, phi in rest.uncovered(glo, ghi):
                if not self._frozen:
                    self._punch(plo - self.base, phi - plo)
                elif self._anon.covers(plo, phi):
                    _libc.madvise(self.host + plo - self.base, phi - plo, _MADV_DONTNEED)
                else:
                    self._fresh(plo, phi - plo)

    # -- Unicorn mappings --------------------------------------------------
    def unicorn_layout(self) -> tuple[list[tuple[int, int, int, int]], tuple[int, int], int]:
        """``unicorn_regions`` with the log mark and generation they include (a new
        Unicorn instance maps these, then applies only later changes)."""
        with self.lock:
            return (self.unicorn_regions(), (self._exec_epoch, len(self._exec_log)),
                    self.exec_generation)

    def unicorn_regions(self) -> list[tuple[int, int, int, int]]:
        """(guest address, size, UC_PROT perms, host pointer) of everything the guest may
        touch: the guard gap is left out, the reserved block is not writable; heap, mmap
        area and stack ranges with other permissions (``protect``) are regions of their
        own."""
        out: list[tuple[int, int, int, int]] = []

        def plain(lo: int, hi: int, perms: int) -> None:
            if hi > lo:
                out.append((lo, hi - lo, perms, self.host + lo - self.base))

        def region(lo: int, hi: int, perms: int) -> None:
            if perms != _RW:
                plain(lo, hi, perms)
                return
            for plo, phi, pperms in self._perms:
                if phi <= lo or plo >= hi:
                    continue
                plain(lo, max(plo, lo), _RW)
                plain(max(plo, lo), min(phi, hi), pperms)
                lo = min(phi, hi)
            plain(lo, hi, _RW)

        cursor = self.base
        for start, end, perms in self.image_perms:
            region(cursor, start, UC_PROT_READ)
            region(start, end, perms)
            cursor = end
        rw = UC_PROT_READ | UC_PROT_WRITE
        region(cursor, self.gap_low, rw)
        region(self.stack_low, self.stack_top, rw)
        region(self.stack_top, self.boot, UC_PROT_READ)
        region(self.boot, self.top, UC_PROT_READ | UC_PROT_EXEC)
        return out

    def in_guard_gap(self, addr: int) -> bool:
        return self.gap_low <= addr < self.stack_low

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

    def make_executable(self, addr: int, length: int) -> bool:
        """Ask every vCPU to map [addr, addr+length) executable (keeping its other
        permissions) at its next syscall; see ``protect``."""
        return self._change_perms(addr, length, lambda perms: perms | _ALL & ~UC_PROT_WRITE)

    def protect(self, addr: int, length: int, prot: int) -> bool:
        """mprotect (and mmap's prot): give [addr, addr+length) exactly the permissions
        ``prot`` (PROT_READ 1, PROT_WRITE 2, PROT_EXEC 4; write or execute imply read, as
        on x86). Every vCPU applies them at its next syscall or resume.

        Only the heap, mmap area and stack change (never the image, whose pages keep
        their ELF permissions, nor the gap or the reserved block). Past MAX_PROT_RANGES
        ranges, False (mprotect: ENOMEM) if the change adds a permission somewhere; one
        that only takes permissions away is then left undone (True).
        """
        perms = uc_perms(bool(prot & 1), bool(prot & 2), bool(prot & 4))
        return self._change_perms(addr, length, lambda _: perms)

    def _change_perms(self, addr: int, length: int, how: Callable[[int], int]) -> bool:
        lo, hi = page_down(addr), page_up(addr + length)
        with self.lock:
            pieces = [(max(lo, zlo), min(hi, zhi)) for zlo, zhi in
                      ((self.image_end, self.gap_low), (self.stack_low, self.stack_top))
                      if min(hi, zhi) > max(lo, zlo)]
            changes: list[tuple[int, int, int]] = []
            widens = False
            for plo, phi in pieces:
                for clo, chi, old in self._perms_in(plo, phi):
                    new = how(old)
                    if new != old:
                        changes.append((clo, chi, new))
                        widens = widens or bool(new & ~old)
            if not changes:
                return True
            ranges = self._perms
            for clo, chi, new in changes:
                ranges = _set_range(ranges, clo, chi, new)
            if len(ranges) > MAX_PROT_RANGES:
                return not widens
            self._perms = ranges
            self._exec_log += changes
            if len(self._exec_log) > 4 * MAX_PROT_RANGES:
                self._exec_log = []
                self._exec_epoch += 1
            self.exec_generation += 1
            return True

    def _perms_in(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Caller holds the lock: [lo, hi) cut into pieces of equal permissions."""
        out: list[tuple[int, int, int]] = []
        for plo, phi, perms in self._perms:
            if phi <= lo or plo >= hi:
                continue
            if plo > lo:
                out.append((lo, plo, _RW))
            out.append((max(plo, lo), min(phi, hi), perms))
            lo = min(phi, hi)
        if hi > lo:
            out.append((lo, hi, _RW))
        return out

    # -- brk / mmap ------------------------------------------------------------
    def _lowest_mmap(self) -> int:
        return self._alloc.starts[0] if len(self._alloc) else self.gap_low

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
        return self.mmap(length, fixed)

    def mmap(self, length: int, fixed: int | None = None,
             file: tuple[int, int] | None = None, shared: bool = False) -> int | None:
        """Allocate (or claim, for MAP_FIXED) zeroed pages, then back them with ``file``
        (host fd, page-aligned offset) if given — MAP_SHARED with ``shared``, so writes
        reach the file and every other mapping of it; None when out of memory or
        mappings."""
        length = page_up(length)
        if length <= 0:
            return None
        with self.lock:
            if fixed is not None:
                if fixed & (PAGE - 1) or fixed < page_up(self.brk) or \
                        fixed + length > self.gap_low:
                    return None
                # remove() may split one range and add() may not merge: room for both
                if len(self._alloc) + 2 > MAX_MAPPINGS or \
                        not self._files.can_remove(fixed, fixed + length):
                    return None
                self._alloc.remove(fixed, fixed + length)
                self.zero(fixed, length)
                self._alloc.add(fixed, fixed + length)
                addr = fixed
            else:
                found = self._free_top_down(length)
                if found is None or not self._alloc.add(found, found + length):
                    return None
                addr = found
            if file is not None and not self._map_file(addr, length, *file, shared=shared):
                self._alloc.remove(addr, addr + length)
                return None
            return addr

    def _free_top_down(self, length: int) -> int | None:
        starts, ends = self._alloc.starts, self._alloc.ends
        hi = self.gap_low
        for i in range(len(starts) - 1, -2, -1):
            lo = ends[i] if i >= 0 else page_up(self.brk) + PAGE
            if hi - lo >= length:
                return hi - length
            if i >= 0:
                hi = starts[i]
        return None

    def _map_file(self, addr: int, length: int, fd: int, offset: int,
                  shared: bool = False) -> bool:
        """Caller holds the lock; [addr, addr+length) is allocated and zero. Map the file's
        pages (those that exist now) over it, lazily, copy-on-write."""
        try:
            size = os.fstat(fd).st_size
        except OSError:
            return False
        n = min(length, page_up(size - offset)) if offset < size else 0
        if n == 0:
            return True
        if not self._files.add(addr, addr + n):
            return False
        self._anon.remove(addr, addr + n)     # frozen: the file replaces fresh zero pages
        at = self.host + addr - self.base
        kind = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        if _libc.mmap(at, n, _PROT_RW, kind | _MAP_FIXED, fd, offset) != at:
            self._anonymous(addr, n)          # a failed MAP_FIXED may have left a hole
            self._forget_files(addr, addr + n)
            return False
        if shared:
            self._shared.append([addr, addr + n, os.dup(fd), offset])
        return True

    def populate_files(self) -> None:
        """Read every page of the file mappings in (before a save: the state file holds
        memory only, so a restored guest must find the file's data in its pages)."""
        with self.lock:
            ranges = self._files.pairs()
        for lo, hi in ranges:
            at, n = self.host + lo - self.base, hi - lo
            if _libc.madvise(at, n, _MADV_POPULATE_READ) == 0:
                continue
            if ctypes.get_errno() != errno.EINVAL:
                continue                      # EFAULT: pages past a shrunk file's end
            fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)   # kernels < 5.14
            try:
                for page in range(at, at + n, 1 << 20):
                    try:
                        os.pread(fd, min(1 << 20, at + n - page), page)
                    except OSError:
                        pass
            finally:
                os.close(fd)

    def file_backed(self) -> list[tuple[int, int]]:
        with self.lock:
            return self._files.pairs()

    def munmap(self, addr: int, length: int) -> bool:
        """False (ENOMEM, nothing changed) when splitting would exceed MAX_MAPPINGS."""
        addr, end = page_down(addr), page_up(addr + length)
        with self.lock:
            # Zero before the range can be handed out again: zeroing after the lock let a
            # concurrent mmap (another guest thread's stack, a malloc arena) get the range,
            # write to it and then lose what it wrote.
            if not (self._alloc.can_remove(addr, end) and self._files.can_remove(addr, end)):
                return False
            for lo, hi in self._alloc.remove(addr, end) or ():
                self.zero(lo, hi - lo)
        self.protect(addr, end - addr, 3)     # unmapped memory reads back as read-write
        return True

    def is_mapped(self, addr: int, length: int) -> bool:
        with self.lock:
            return self._alloc.covers(addr, addr + length)

    def resize(self, addr: int, old: int, new: int) -> int | None:
        """Grow or shrink an mmap allocation in place; None if it cannot grow in place."""
        old, new = page_up(old), page_up(new)
        if new <= old:
            return addr if self.munmap(addr + new, old - new) else None
        with self.lock:
            span = self._alloc.containing(addr)
            if span is None or span[1] != addr + old:
                return None
            limit = self._alloc.next_start(span[1])
            if addr + new > (self.gap_low if limit is None else limit):
                return None
            self._alloc.grow(span[0], addr + new)
            return addr

    # -- fork --------------------------------------------------------------------------
    def _freeze(self) -> None:
        """Caller holds the lock. From now on this address space is MAP_PRIVATE over its
        memfd (same addresses and contents), so the memfd can be shared with a child."""
        if self._frozen:
            return
        for lo, hi in self._files.uncovered(self.base, self.top):
            self._remap(lo, hi - lo, _PRIVATE | _MAP_FIXED, self._memfd, lo - self.base,
                        "freeze memory for fork")
        self._frozen = True

    def clone(self) -> GuestMemory:
        """fork: a new address space with this one's layout, bookkeeping and contents,
        copy-on-write (see the module docstring): pages are shared until either side
        writes them, except what this one wrote since an earlier fork, its zeroed ranges
        and its file mappings, which are copied now."""
        self.populate_files()
        child = GuestMemory.__new__(GuestMemory)
        with self.lock:
            self._freeze()
            child.__dict__.update({k: v for k, v in self.__dict__.items()
                                   if k in _LAYOUT_FIELDS})
            child._memfd = os.dup(self._memfd)
            host = _libc.mmap(None, self.size, _PROT_RW, _PRIVATE | _MAP_NORESERVE,
                              child._memfd, 0)
            if host is None or host == _MAP_FAILED:
                os.close(child._memfd)
                raise MemoryError("cannot map the child's memory")
            child.host = host
            child.view = memoryview((ctypes.c_ubyte * self.size).from_address(host)).cast("B")
            child.lock = threading.Lock()
            child._frozen = True
            child._alloc = RangeSet(MAX_MAPPINGS)
            child._alloc.load(self._alloc.pairs())
            child._files = RangeSet(MAX_FILE_MAPPINGS)
            child._perms = list(self._perms)          # a new instance maps them at once
            child._exec_log = []
            child._exec_epoch = 0
            child.exec_generation = 0
            child.image_perms = list(self.image_perms)
            child._anon = RangeSet(MAX_MAPPINGS)
            child._shared = []
            own = RangeSet(2 * MAX_MAPPINGS)
            for lo, hi in self._anon.pairs() + self._files.pairs():
                own.add(lo, hi)
            shared = RangeSet(MAX_FILE_MAPPINGS)
            shared.load(sorted((lo, hi) for lo, hi, _, _ in self._shared))
            for lo, hi in own.pairs():                 # ranges not on the memfd: copied
                child._fresh(lo, hi - lo)
                for plo, phi in shared.uncovered(lo, hi):
                    for rlo, rhi in _page_runs(self.host + plo - self.base, phi - plo,
                                               _TOUCHED):
                        self._copy_to(child, plo - self.base + rlo, rhi - rlo)
            for lo, hi, fd, off in self._shared:      # MAP_SHARED stays shared with the file
                child._files.add(lo, hi)
                child._anon.remove(lo, hi)
                at = child.host + lo - self.base
                if _libc.mmap(at, hi - lo, _PROT_RW, mmap.MAP_SHARED | _MAP_FIXED, fd,
                              off) != at:
                    raise MemoryError("cannot share a file mapping with the child")
                child._shared.append([lo, hi, os.dup(fd), off])
            for slo, shi in self._spans():          # on the memfd: only the pages written
                for lo, hi in own.uncovered(slo, shi):
                    for rlo, rhi in _page_runs(self.host + lo - self.base, hi - lo,
                                               _PRIVATE_PAGE):
                        self._copy_to(child, lo - self.base + rlo, rhi - rlo)
        return child

    def _spans(self) -> list[tuple[int, int]]:
        """Caller holds the lock: guest ranges the guest can have touched (the image and
        heap, every mmap allocation, the stack and the reserved block)."""
        return [(self.base, page_up(self.brk)), *self._alloc.pairs(),
                (self.stack_low, self.top)]

    def _copy_to(self, child: GuestMemory, off: int, n: int) -> None:
        ctypes.memmove(child.host + off, self.host + off, n)

    def touched_runs(self) -> list[tuple[int, int]]:
        """(offset, length) of every page run this address space holds data in: written
        through the memfd (its own or, after a fork, shared), or private to it."""
        with self.lock:
            found = RangeSet(1 << 62)
            for lo, hi in _data_runs(self._memfd, self.size):
                found.add(lo, hi)
            for slo, shi in self._spans():
                for lo, hi in _page_runs(self.host + slo - self.base, shi - slo, _TOUCHED):
                    found.add(slo - self.base + lo, slo - self.base + hi)
        return [(lo, hi - lo) for lo, hi in found.pairs()]

    def private_bytes(self) -> int:
        """Bytes of memory only this address space holds: pages it wrote after a fork,
        anonymous and file-backed pages it touched (the memfd's pages are counted by
        ``shared_bytes``, once for every address space that shares it)."""
        with self.lock:
            return sum(hi - lo for slo, shi in self._spans()
                       for lo, hi in _page_runs(self.host + slo - self.base, shi - slo,
                                                _PRIVATE_PAGE))

    def shared_key(self) -> tuple[int, int]:
        """Identifies the memfd (device, inode): address spaces with the same key share it."""
        st = os.fstat(self._memfd)
        return st.st_dev, st.st_ino

    def shared_bytes(self) -> int:
        """Bytes the memfd holds (its written pages, whoever wrote them)."""
        return os.fstat(self._memfd).st_blocks * 512

    # -- saved states ----------------------------------------------------------------------
    def layout(self) -> dict[str, Any]:
        """The bookkeeping a saved state needs to rebuild this address space (JSON-able)."""
        with self.lock:
            return {"base": self.base, "image_end": self.image_end, "uid": self.uid,
                    "memory_bytes": self.memory_bytes, "bits": self.bits, "size": self.size,
                    "brk_start": self.brk_start, "brk": self.brk, "starts": self._starts,
                    "ends": self._ends, "exec_generation": self.exec_generation,
                    "exec_ranges": self.exec_ranges, "perm_ranges": self.perm_ranges,
                    "image_perms": self.image_perms,
                    "frozen": self._frozen, "anon": self._anon.pairs(),
                    "own": sorted(self._files.pairs()), "vmas": vmas.dump(self)}

    def save_shared(self, out: int) -> int:
        """Write the memfd's data (what every address space sharing it starts from) to the
        descriptor ``out`` as runs: u64 count, (u64 offset, u64 length) each, then bytes."""
        view_at = _libc.mmap(None, self.size, mmap.PROT_READ, _SHARED, self._memfd, 0)
        if view_at is None or view_at == _MAP_FAILED:
            raise MemoryError("cannot map guest memory to save it")
        try:
            runs = _nonzero(view_at, _data_runs(self._memfd, self.size))
            write_all_fd(out, len(runs).to_bytes(8, "little") + b"".join(
                lo.to_bytes(8, "little") + (hi - lo).to_bytes(8, "little") for lo, hi in runs))
            for lo, hi in runs:
                for pos in range(lo, hi, 1 << 24):
                    write_all_fd(out, ctypes.string_at(view_at + pos, min(hi - pos, 1 << 24)))
        finally:
            _libc.munmap(view_at, self.size)
        return sum(hi - lo for lo, hi in runs)

    def save_own(self, out: int) -> int:
        """Write what this address space holds beyond its memfd (file-backed and zeroed
        ranges, and after a fork the pages it wrote) to ``out`` in save_shared's format,
        all-zero pages left out."""
        self.populate_files()
        with self.lock:
            runs: list[tuple[int, int]] = []
            own = RangeSet(2 * MAX_MAPPINGS)
            for lo, hi in self._anon.pairs() + self._files.pairs():
                own.add(lo, hi)
            for lo, hi in own.pairs():
                runs += [(lo - self.base + a, lo - self.base + b)
                         for a, b in _page_runs(self.host + lo - self.base, hi - lo, _TOUCHED)]
            if self._frozen:
                for slo, shi in self._spans():
                    for lo, hi in own.uncovered(slo, shi):
                        runs += [(lo - self.base + a, lo - self.base + b) for a, b in
                                 _page_runs(self.host + lo - self.base, hi - lo,
                                            _PRIVATE_PAGE)]
            runs = _nonzero(self.host, sorted(runs))
            write_all_fd(out, len(runs).to_bytes(8, "little") + b"".join(
                lo.to_bytes(8, "little") + (hi - lo).to_bytes(8, "little") for lo, hi in runs))
            for lo, hi in runs:
                write_all_fd(out, self.view[lo:hi])
        return sum(hi - lo for lo, hi in runs)

    @staticmethod
    def load_shared(size: int, src: BinaryIO, length: int) -> int:
        """A new memfd of ``size`` holding the runs save_shared wrote (``length`` bytes of
        ``src``); the caller owns the returned descriptor."""
        memfd = os.memfd_create("viridian-guest", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, size)
            for lo, n in _read_runs(src, length, size):
                done = 0
                while done < n:
                    chunk = src.read(min(n - done, 1 << 24))
                    if not chunk:
                        raise ValueError("memory section is truncated")
                    os.pwrite(memfd, chunk, lo + done)
                    done += len(chunk)
        except BaseException:
            os.close(memfd)
            raise
        return memfd

    @classmethod
    def restore(cls, layout: dict[str, Any], memfd: int, src: BinaryIO,
                length: int) -> GuestMemory:
        """Rebuild an address space from its ``layout``, its (restored) memfd — shared
        with the others that shared it when saved, MAP_PRIVATE if it was frozen — and its
        own pages (``length`` bytes of ``src``, save_own's format)."""
        mem = cls(int(layout["base"]), int(layout["image_end"]), int(layout["memory_bytes"]),
                  int(layout.get("bits", 64)))
        if mem.size != int(layout["size"]):
            mem.close()
            raise ValueError("guest memory layout differs from the saved one")
        with mem.lock:
            frozen = bool(layout.get("frozen", False))
            os.close(mem._memfd)
            mem._memfd = os.dup(memfd)
            kind = (_PRIVATE if frozen else _SHARED) | _MAP_FIXED
            mem._remap(mem.base, mem.size, kind, mem._memfd, 0, "restore guest memory")
            mem._frozen = frozen
            for lo, hi in layout.get("anon", []) + layout.get("own", []):
                if frozen:
                    mem._fresh(int(lo), int(hi) - int(lo))
            mem.brk_start, mem.brk = int(layout["brk_start"]), int(layout["brk"])
            mem._starts, mem._ends = list(layout["starts"]), list(layout["ends"])
            mem.exec_generation = int(layout["exec_generation"])
            mem.uid = int(layout.get("uid", 0))
            mem.image_perms = [(int(a), int(b), int(c)) for a, b, c in layout["image_perms"]]
        if "perm_ranges" in layout:
            mem.perm_ranges = [(int(lo), int(hi), int(p)) for lo, hi, p in layout["perm_ranges"]]
        else:                                      # saved before protections were kept
            mem.exec_ranges = [(int(lo), int(hi)) for lo, hi in layout["exec_ranges"]]
        vmas.load(mem, layout.get("vmas"))
        for lo, n in _read_runs(src, length, mem.size):
            view = mem.view[lo:lo + n]
            while view:
                got = src.readinto(view)  # type: ignore[attr-defined]
                if not got:
                    mem.close()
                    raise ValueError("memory section is truncated")
                view = view[got:]
        return mem

    def close(self) -> None:
        """Unmap the guest's memory (once; later calls do nothing)."""
        if self.host == 0:
            return
        self.view.release()
        _libc.munmap(self.host, self.size)
        self.host = 0
        os.close(self._memfd)
        for _, _, fd, _ in self._shared:
            os.close(fd)
        self._shared = []


_PAGEMAP_CHUNK = 1 << 15                           # pages per read (256 KiB of entries)
#: pagemap entry top byte -> b"1"/b"0": bit 63 present, 62 swapped, 61 file page/shared.
_TOUCHED = bytes(0x31 if b & 0xC0 else 0x30 for b in range(256))
_PRIVATE_PAGE = bytes(0x31 if b & 0xC0 and not b & 0x20 else 0x30 for b in range(256))
_RUN = re.compile(b"1+")
#: What a child's GuestMemory copies from its parent as is (the rest is built in clone).
_LAYOUT_FIELDS = frozenset({"base", "uid", "memory_bytes", "bits", "image_end", "size", "top",
                            "boot", "stack_top", "reserved", "stack_low", "gap_low",
                            "brk_start", "brk"})


def _page_runs(host: int, length: int, table: bytes) -> list[tuple[int, int]]:
    """Byte ranges (relative to ``host``) of the pages of [host, host+length) whose
    /proc/self/pagemap entry ``table`` maps to b"1" (_TOUCHED: present or swapped;
    _PRIVATE_PAGE: and not a file/shared page, i.e. written by this process since it
    mapped it). Translating each entry's top byte finds the runs with a regular expression
    instead of a Python loop per page."""
    first = host // PAGE
    count = page_up(length) // PAGE
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        flags = bytearray()
        for chunk in range(0, count, _PAGEMAP_CHUNK):
            n = min(_PAGEMAP_CHUNK, count - chunk)
            raw = os.pread(fd, 8 * n, 8 * (first + chunk))
            flags += raw[7::8].translate(table)
    finally:
        os.close(fd)
    return [(m.start() * PAGE, m.end() * PAGE) for m in _RUN.finditer(flags)]


def write_all_fd(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view[:1 << 30]):]


def _read_runs(src: BinaryIO, length: int, size: int) -> list[tuple[int, int]]:
    """The (offset, length) table at the head of a runs section, checked against the
    section's ``length`` and the address space's ``size`` (a state file is hostile)."""
    head = src.read(8)
    if len(head) != 8:
        raise ValueError("memory section is truncated")
    count = int.from_bytes(head, "little")
    if 8 + 16 * count > length:
        raise ValueError("memory section's run table is longer than the section")
    table = src.read(16 * count)
    runs = [(int.from_bytes(table[16 * i:16 * i + 8], "little"),
             int.from_bytes(table[16 * i + 8:16 * i + 16], "little")) for i in range(count)]
    total = 8 + 16 * count
    for lo, n in runs:
        if lo < 0 or n < 0 or lo + n > size:
            raise ValueError(f"memory run 0x{lo:x}+{n} is outside guest memory")
        total += n
    if total != length:
        raise ValueError("memory section's runs do not add up to its length")
    return runs


_ZERO_PAGE = bytes(PAGE)


def _nonzero(host: int, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``runs`` (offsets from ``host``) without their all-zero pages."""
    out: list[tuple[int, int]] = []
    for lo, hi in runs:
        start = -1
        for page in range(lo, hi, PAGE):
            zero = ctypes.string_at(host + page, PAGE) == _ZERO_PAGE
            if not zero and start < 0:
                start = page
            elif zero and start >= 0:
                out.append((start, page))
                start = -1
        if start >= 0:
            out.append((start, hi))
    return out


def _data_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the page-rounded data extents of a memfd (SEEK_DATA/SEEK_HOLE)."""
    runs: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:             # no data past pos
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        runs.append((page_down(start), min(page_up(end), size)))
        pos = end
    return runs


def uc_perms(readable: bool, writable: bool, executable: bool) -> int:
    perms = UC_PROT_READ if readable or writable or executable else 0
    if writable:
        perms |= UC_PROT_WRITE
    if executable:
        perms |= UC_PROT_EXEC
    return perms


def _set_range(ranges: list[tuple[int, int, int]], lo: int, hi: int,
               perms: int) -> list[tuple[int, int, int]]:
    """``ranges`` (sorted, disjoint, never read-write) with [lo, hi) set to ``perms``;
    neighbours with equal permissions merged."""
    out: list[tuple[int, int, int]] = []
    for plo, phi, pperms in ranges:
        if phi <= lo or plo >= hi:
            out.append((plo, phi, pperms))
            continue
        if plo < lo:
            out.append((plo, lo, pperms))
        if phi > hi:
            out.append((hi, phi, pperms))
    if perms != _RW:
        out.append((lo, hi, perms))
    out.sort()
    merged: list[tuple[int, int, int]] = []
    for plo, phi, pperms in out:
        if merged and merged[-1][1] == plo and merged[-1][2] == pperms:
            merged[-1] = (merged[-1][0], phi, pperms)
        else:
            merged.append((plo, phi, pperms))
    return merged
