"""Address-space syscalls: brk, mmap, munmap, mprotect, mremap, madvise."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..files import DeviceFile, HostFile, OpenFile
from ..memory import PAGE, page_up
from ..vmas import Region, vmas_of
from .common import E, s32

if TYPE_CHECKING:
    from ..task import Task

MAP_SHARED, MAP_FIXED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x1, 0x10, 0x20, 0x100000
PROT_WRITE, PROT_EXEC = 2, 4
PROT_GROWS = 0x01000000 | 0x02000000              # PROT_GROWSDOWN, PROT_GROWSUP
MS_ASYNC, MS_INVALIDATE, MS_SYNC = 1, 2, 4



# -- memory ---------------------------------------------------------------------------
def sys_brk(t: Task, addr: int, *_: int) -> int:
    return t.mem.set_brk(addr)


def do_mmap(t: Task, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
    """Anonymous memory, or a regular file's pages, read lazily (memory.py).

    MAP_SHARED of a file open for reading and writing maps the file itself: the guest's
    writes reach it, read() and every other mapping. MAP_SHARED of a file open read-only
    (it cannot be written through this mapping: PROT_WRITE gives EACCES, as on Linux) is
    served as MAP_PRIVATE, whose untouched pages still follow the file. /dev/zero maps
    anonymous memory; other non-regular files give ENODEV, a file not open for reading
    EACCES, as on Linux.
    """
    mem = t.mem
    if length == 0 or off & (PAGE - 1):
        return E.INVAL
    if length > mem.size:
        return E.NOMEM
    fixed = addr if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) else None
    if fixed is not None and fixed & (PAGE - 1):
        return E.INVAL
    backing: tuple[int, int] | None = None
    source: HostFile | None = None
    shared = False
    if not flags & MAP_ANONYMOUS:
        file = t.fds.get(s32(fd))
        if isinstance(file, DeviceFile) and file.gpath == "/dev/zero":
            pass
        elif not isinstance(file, HostFile):
            return E.NODEV
        elif not file.readable:
            return E.ACCES
        else:
            if off + page_up(length) > 1 << 63:
                return E.OVERFLOW
            if flags & MAP_SHARED and prot & PROT_WRITE and not file.writable:
                return E.ACCES
            backing, source = (file.fd, off), file
            shared = bool(flags & MAP_SHARED) and file.writable
    result = mem.mmap(length, fixed, backing, shared)
    if result is None:
        return E.NOMEM
    if not mem.protect(result, length, prot):       # memory.py: capped ranges
        mem.munmap(result, length)
        return E.NOMEM
    _remember(t, result, length, prot, flags, source, off)
    return result


def _remember(t: Task, addr: int, length: int, prot: int, flags: int,
              file: OpenFile | None, off: int) -> None:
    """What /proc/<pid>/maps shows of a new mapping (vmas.py)."""
    region = Region(addr, addr + page_up(length), prot & 7, shared=bool(flags & MAP_SHARED))
    if file is not None:
        try:
            info = file.stat()
        except OSError:
            info = None
        if info is not None:
            region = replace(region, path=file.gpath, offset=off, dev=info.dev, ino=info.ino)
    vmas_of(t.mem).map(region)


def sys_munmap(t: Task, addr: int, length: int, *_: int) -> int:
    if addr & 0xFFF:
        return E.INVAL
    if not t.mem.munmap(addr, length):
        return E.NOMEM
    vmas_of(t.mem).unmap(addr, addr + page_up(length))
    return 0


def sys_mprotect(t: Task, addr: int, length: int, prot: int, *_: int) -> int:
    """The heap, mmap area and stack get exactly ``prot`` (a store to a read-only page
    faults: SIGSEGV, SEGV_ACCERR); the image keeps its ELF permissions (memory.py)."""
    if addr & (PAGE - 1) or prot & ~(7 | PROT_GROWS):
        return E.INVAL
    if not t.mem.protect(addr, length, prot & 7):
        return E.NOMEM
    if not addr & (PAGE - 1):
        vmas_of(t.mem).protect(addr, addr + page_up(length), prot & 7)
    return 0


def sys_mremap(t: Task, old: int, old_size: int, new_size: int, flags: int, *_: int) -> int:
    mem = t.mem
    if not mem.is_mapped(old, old_size):
        return E.FAULT
    grown = mem.resize(old, old_size, new_size)
    if grown is not None:
        vmas_of(mem).move(old, page_up(old_size), old, page_up(new_size))
        return grown
    if not flags & 1:                            # MREMAP_MAYMOVE
        return E.NOMEM
    new = mem.mmap_anon(new_size)
    if new is None:
        return E.NOMEM
    mem.copy(new, old, min(old_size, new_size))
    mem.munmap(old, old_size)
    vmas_of(mem).move(old, page_up(old_size), new, page_up(new_size))
    return new


def sys_madvise(t: Task, addr: int, length: int, advice: int, *_: int) -> int:
    if advice == 4:                              # MADV_DONTNEED: zero, or the file again
        if addr & (PAGE - 1):
            return E.INVAL
        if t.mem.is_mapped(addr, page_up(length)):
            t.mem.discard(addr, length)
    return 0


def sys_msync(t: Task, addr: int, length: int, flags: int, *_: int) -> int:
    if addr & (PAGE - 1) or flags & ~(MS_ASYNC | MS_INVALIDATE | MS_SYNC) or \
            (flags & MS_ASYNC and flags & MS_SYNC):
        return E.INVAL
    return 0 if t.mem.msync(addr, length) else E.NOMEM
