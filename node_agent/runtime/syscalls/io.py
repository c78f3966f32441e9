"""Reading and writing open descriptors: read, write, pread, pwrite, readv, writev,
lseek."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..files import ConsoleFile, OpenFile
from .common import s32, s64
from .paths import sandbox

if TYPE_CHECKING:
    from ..task import Task

MAX_IO = 16 << 20



def sys_read(t: Task, fd: int, buf: int, count: int, *_: int) -> int:
    file = t.fds.get(s32(fd))
    if isinstance(file, ConsoleFile) and count:
        assert t.thread is not None
        t.mem.write(buf, b"")                 # EFAULT now rather than later
        t.mem.read(buf, min(count, 1 << 16))
        return t.kernel.read_stdin(t.thread, buf, count)
    data = file.read(min(count, MAX_IO))
    t.mem.write(buf, data)
    return len(data)


def writable_file(t: Task, fd: int) -> OpenFile:
    """The open file ``fd`` for a call that may grow it (its quota is attached by then)."""
    sandbox(t)
    return t.fds.get(s32(fd))


def sys_write(t: Task, fd: int, buf: int, count: int, *_: int) -> int:
    file = writable_file(t, fd)
    return file.write(t.mem.read(buf, min(count, MAX_IO)))


def sys_pread64(t: Task, fd: int, buf: int, count: int, off: int, *_: int) -> int:
    data = t.fds.get(s32(fd)).pread(min(count, MAX_IO), s64(off))
    t.mem.write(buf, data)
    return len(data)


def sys_pwrite64(t: Task, fd: int, buf: int, count: int, off: int, *_: int) -> int:
    file = writable_file(t, fd)
    return file.pwrite(t.mem.read(buf, min(count, MAX_IO)), s64(off))


def sys_readv(t: Task, fd: int, iov: int, count: int, *_: int) -> int:
    file = t.fds.get(s32(fd))
    total = 0
    for base, length in t.abi.iovecs(t.mem, iov, s32(count)):
        data = file.read(min(length, MAX_IO))
        t.mem.write(base, data)
        total += len(data)
        if len(data) < length:
            break
    return total


def sys_writev(t: Task, fd: int, iov: int, count: int, *_: int) -> int:
    file = writable_file(t, fd)
    parts: list[bytes] = []
    room = MAX_IO                               # one call moves at most MAX_IO bytes
    for base, length in t.abi.iovecs(t.mem, iov, s32(count)):
        if room <= 0:
            break
        parts.append(t.mem.read(base, min(length, room)))
        room -= len(parts[-1])
    return file.write(b"".join(parts))


def sys_lseek(t: Task, fd: int, off: int, whence: int, *_: int) -> int:
    bits = 64 if t.is64 else 32
    offset = s64(off) if bits == 64 else s32(off)
    return t.fds.get(s32(fd)).seek(offset, whence)
