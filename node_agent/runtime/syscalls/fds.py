"""Descriptor-level syscalls: dup, fcntl, ioctl, pipes, poll, sendfile, fsync."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..files import MAX_FDS, ConsoleFile, PipeBuffer, PipeEnd
from .common import E, s32, s64
from .io import writable_file

if TYPE_CHECKING:
    from ..task import Task

O_APPEND, O_CLOEXEC, O_CREAT, O_EXCL, O_TRUNC = 0o2000, 0o2000000, 0o100, 0o200, 0o1000
O_ACCMODE = 3
MAX_IO = 16 << 20


def sys_sendfile(t: Task, out_fd: int, in_fd: int, off_ptr: int, count: int, *_: int) -> int:
    src = t.fds.get(s32(in_fd))
    dst = writable_file(t, out_fd)
    if isinstance(src, (ConsoleFile, PipeEnd)):
        return E.INVAL                          # callers fall back to read/write
    count = min(count, MAX_IO)
    if off_ptr:
        offset = t.mem.u64(off_ptr) if t.is64 else t.mem.u32(off_ptr)
        data = src.pread(count, offset)
        t.abi.write_word(t.mem, off_ptr, offset + len(data))
    else:
        data = src.read(count)
    return dst.write(data) if data else 0


def sys_dup(t: Task, fd: int, *_: int) -> int:
    fds = t.fds
    return fds.add(fds.get(s32(fd)))


def sys_dup3(t: Task, old: int, new: int, flags: int, *_: int) -> int:
    if s32(old) == s32(new):
        return E.INVAL
    return t.fds.dup_to(s32(old), s32(new), bool(flags & O_CLOEXEC))


def sys_dup2(t: Task, old: int, new: int, *_: int) -> int:
    t.fds.get(s32(old))
    return t.fds.dup_to(s32(old), s32(new))


def sys_fcntl(t: Task, fd: int, cmd: int, arg: int, *_: int) -> int:
    fds = t.fds
    fd = s32(fd)
    file = fds.get(fd)
    if cmd in (0, 1030):                       # F_DUPFD, F_DUPFD_CLOEXEC
        lowest = s64(arg) if t.is64 else s32(arg)
        if not 0 <= lowest < MAX_FDS:           # as Linux: EINVAL, never a negative fd
            return E.INVAL
        return fds.add(file, minimum=lowest, cloexec=cmd == 1030)
    if cmd == 1:                               # F_GETFD
        return 1 if fd in fds.cloexec else 0
    if cmd == 2:                               # F_SETFD
        (fds.cloexec.add if arg & 1 else fds.cloexec.discard)(fd)
        return 0
    if cmd == 3:                               # F_GETFL
        return file.flags & ~(O_CLOEXEC | O_CREAT | O_EXCL | O_TRUNC)
    if cmd == 4:                               # F_SETFL
        file.flags = (file.flags & O_ACCMODE) | (arg & (O_APPEND | 0o4000))
        return 0
    if cmd in (5, 6, 7, 36, 37, 38):           # record locks: single process, always granted
        return 0
    return E.INVAL


def sys_ioctl(t: Task, fd: int, req: int, arg: int, *_: int) -> int:
    t.fds.get(s32(fd))
    if req & 0xFFFFFFFF == 0x5421:             # FIONBIO
        return 0
    return E.NOTTY


def sys_pipe2(t: Task, fds_ptr: int, flags: int, *_: int) -> int:
    buf = PipeBuffer()
    fds = t.fds
    cloexec = bool(flags & O_CLOEXEC)
    rfd = fds.add(PipeEnd(0, buf, False), cloexec=cloexec)
    wfd = fds.add(PipeEnd(0, buf, True), cloexec=cloexec)
    t.mem.write(fds_ptr, struct.pack("<ii", rfd, wfd))
    return 0


def sys_pipe(t: Task, fds_ptr: int, *_: int) -> int:
    return sys_pipe2(t, fds_ptr, 0)


def sys_poll(t: Task, fds_ptr: int, nfds: int, *_: int) -> int:
    if nfds > 1024:
        return E.INVAL
    ready = 0
    for i in range(nfds):
        fd, events, _rev = struct.unpack("<ihh", t.mem.read(fds_ptr + 8 * i, 8))
        if fd < 0:
            revents = 0
        elif fd not in t.fds.files:
            revents = 0x20                      # POLLNVAL
        else:
            revents = events & 0x5              # POLLIN | POLLOUT: always ready
        ready += bool(revents)
        t.mem.write(fds_ptr + 8 * i + 6, struct.pack("<h", revents))
    return ready


def sys_fsync(t: Task, fd: int, *_: int) -> int:
    t.fds.get(s32(fd))
    return 0
