"""Descriptor-level syscalls: dup, fcntl, ioctl, pipes, eventfd, sendfile, fsync.

poll/select/epoll are in polling.py, sockets in sockets.py."""

from __future__ import annotations

import errno
import struct
import weakref
from typing import TYPE_CHECKING

from .. import waitq
from ..eventfd import EventFd
from ..files import MAX_FDS, O_NONBLOCK, ConsoleFile, FifoNode, HostFile, PipeBuffer, PipeEnd
from ..sockets import names_of
from .common import BLOCK, E, s32, s64
from .io import writable_file, write_stream
from .paths import path_at, sandbox

if TYPE_CHECKING:
    from ..task import Task
    from ..threads import GuestThread

O_APPEND, O_CLOEXEC, O_CREAT, O_EXCL, O_TRUNC = 0o2000, 0o2000000, 0o100, 0o200, 0o1000
O_ACCMODE = 3
MAX_IO = 16 << 20


def sys_sendfile(t: Task, out_fd: int, in_fd: int, off_ptr: int, count: int, *_: int) -> int:
    src = t.fds.get(s32(in_fd))
    dst = writable_file(t, out_fd)
    if isinstance(src, ConsoleFile) or src.blocking:
        return E.INVAL                          # callers fall back to read/write
    count = min(count, MAX_IO)
    offset = (t.mem.u64(off_ptr) if t.is64 else t.mem.u32(off_ptr)) if off_ptr else \
        src.seek(0, 1)
    if not dst.blocking:
        data = src.pread(count, offset)
        moved = dst.write(data) if data else 0
    else:
        # Into a pipe or socket: read without consuming, move what fits (or park: the
        # retry reads the same bytes again), then advance by what moved.
        data = src.pread(min(count, PipeBuffer.LIMIT), offset)
        if not data:
            return 0
        moved = write_stream(t, dst, data, ("sendfile", out_fd))
        if moved < 0 or moved == BLOCK:
            return moved
    if off_ptr:
        t.abi.write_word(t.mem, off_ptr, offset + moved)
    else:
        src.seek(offset + moved, 0)
    return moved


def sys_dup(t: Task, fd: int, *_: int) -> int:
    fds = t.fds
    return fds.add(fds.get(s32(fd)))


def sys_dup3(t: Task, old: int, new: int, flags: int, *_: int) -> int:
    if s32(old) == s32(new) or flags & ~O_CLOEXEC:
        return E.INVAL
    return t.fds.dup_to(s32(old), s32(new), bool(flags & O_CLOEXEC))


def sys_dup2(t: Task, old: int, new: int, *_: int) -> int:
    t.fds.get(s32(old))
    return t.fds.dup_to(s32(old), s32(new))


F_SETFL_BITS = O_APPEND | O_NONBLOCK | 0o20000 | 0o40000 | 0o1000000   # +ASYNC, DIRECT, NOATIME


def sys_fcntl(t: Task, fd: int, cmd: int, arg: int, *_: int) -> int:
    fds = t.fds
    fd = s32(fd)
    file = fds.get(fd)
    cmd = s32(cmd)
    if cmd in (0, 1030):                       # F_DUPFD, F_DUPFD_CLOEXEC
        lowest = s64(arg) if t.is64 else s32(arg)
        if not 0 <= lowest < MAX_FDS:           # as Linux: EINVAL, never a negative fd
            return E.INVAL
        return fds.add(file, minimum=lowest, cloexec=cmd == 1030)
    if cmd == 1:                               # F_GETFD
        return 1 if fd in fds.cloexec else 0
    if cmd == 2:                               # F_SETFD
        with fds.lock:
            if fds.files.get(fd) is file:
                (fds.cloexec.add if arg & 1 else fds.cloexec.discard)(fd)
        return 0
    if cmd == 3:                               # F_GETFL
        return file.flags & ~(O_CLOEXEC | O_CREAT | O_EXCL | O_TRUNC)
    if cmd == 4:                               # F_SETFL: the description's, shared by dups
        with t.kernel.sched.cond:
            file.flags = (file.flags & ~F_SETFL_BITS) | (arg & F_SETFL_BITS)
        return 0
    if cmd in (5, 6, 7, 36, 37, 38):           # record locks: single process, always granted
        return 0
    if cmd == 1032:                            # F_GETPIPE_SZ
        return PipeBuffer.LIMIT if isinstance(file, PipeEnd) else E.BADF
    if cmd == 1031:                            # F_SETPIPE_SZ: the size stays 64 KiB
        if not isinstance(file, PipeEnd):
            return E.BADF
        return PipeBuffer.LIMIT if arg & 0xFFFFFFFF <= PipeBuffer.LIMIT else E.PERM
    return E.INVAL


FIONBIO, FIONREAD, FIOCLEX, FIONCLEX = 0x5421, 0x541B, 0x5451, 0x5450


def sys_ioctl(t: Task, fd: int, req: int, arg: int, *_: int) -> int:
    fd = s32(fd)
    file = t.fds.get(fd)
    req &= 0xFFFFFFFF
    if req == FIONBIO:
        on = t.mem.u32(arg) != 0
        with t.kernel.sched.cond:
            file.flags = file.flags | O_NONBLOCK if on else file.flags & ~O_NONBLOCK
        return 0
    if req == FIONREAD:
        if isinstance(file, HostFile):
            size = file.stat().size
            count = max(size - file.seek(0, 1), 0)
        else:
            with t.kernel.sched.cond:
                count = file.unread()
        t.mem.put_u32(arg, min(count, 0x7FFFFFFF))
        return 0
    if req in (FIOCLEX, FIONCLEX):
        with t.fds.lock:
            (t.fds.cloexec.add if req == FIOCLEX else t.fds.cloexec.discard)(fd)
        return 0
    return E.NOTTY


PIPE_FLAGS = O_CLOEXEC | O_NONBLOCK | 0o40000        # O_DIRECT (packet mode) accepted


def sys_pipe2(t: Task, fds_ptr: int, flags: int, *_: int) -> int:
    if flags & ~PIPE_FLAGS:
        return E.INVAL
    t.mem.write(fds_ptr, bytes(8))              # EFAULT before anything is created
    buf = PipeBuffer(t.kernel.sched.cond)
    nonblock = flags & O_NONBLOCK
    ends = PipeEnd(nonblock, buf, False), PipeEnd(nonblock, buf, True)
    try:
        rfd, wfd = t.fds.add_pair(*ends, cloexec=bool(flags & O_CLOEXEC))
    except OSError:
        for end in ends:
            end.close()
        raise
    t.mem.write(fds_ptr, struct.pack("<ii", rfd, wfd))
    return 0


def sys_pipe(t: Task, fds_ptr: int, *_: int) -> int:
    return sys_pipe2(t, fds_ptr, 0)


EFD_SEMAPHORE, EFD_NONBLOCK, EFD_CLOEXEC = 1, O_NONBLOCK, O_CLOEXEC


def sys_eventfd2(t: Task, initval: int, flags: int, *_: int) -> int:
    if flags & ~(EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC):
        return E.INVAL
    file = EventFd(flags & EFD_NONBLOCK, t.kernel.sched.cond, initval & 0xFFFFFFFF,
                   bool(flags & EFD_SEMAPHORE))
    return t.fds.add(file, cloexec=bool(flags & EFD_CLOEXEC))


def sys_eventfd(t: Task, initval: int, *_: int) -> int:
    return sys_eventfd2(t, initval, 0)


def sys_fsync(t: Task, fd: int, *_: int) -> int:
    t.fds.get(s32(fd))
    return 0


# -- FIFOs -----------------------------------------------------------------------------------
S_IFMT, S_IFREG, S_IFIFO, S_IFSOCK = 0o170000, 0o100000, 0o010000, 0o140000
AT_FDCWD = -100


def sys_mknodat(t: Task, dirfd: int, ptr: int, mode: int, dev: int, *_: int) -> int:
    """FIFOs and socket nodes in the writable layer; a regular file as open(O_EXCL); no
    devices (EPERM, as for an unprivileged process)."""
    path, base = path_at(t, dirfd, ptr)
    mode &= 0o177777
    kind = mode & S_IFMT or S_IFREG
    perm = mode & 0o7777 & ~t.process.umask
    if kind == S_IFREG:
        sandbox(t).open(path, base, O_CREAT | O_EXCL | 1, perm).close()
        return 0
    if kind in (S_IFIFO, S_IFSOCK):
        sandbox(t).mknod_at(path, base, kind | perm)
        return 0
    if kind in (0o020000, 0o060000):              # character, block devices
        return E.PERM
    return E.INVAL


def sys_mknod(t: Task, ptr: int, mode: int, dev: int, *_: int) -> int:
    return sys_mknodat(t, AT_FDCWD & 0xFFFFFFFF, ptr, mode, dev)


def open_fifo(t: Task, node: FifoNode, flags: int) -> int:
    """open(2) of a FIFO: an end of the partition's pipe for that node. As on Linux the end
    counts at once and a reader then waits for a writer to have opened (and a writer for a
    reader); O_RDWR never waits; O_NONBLOCK: a reader opens at once, a writer without a
    reader gets ENXIO. A waiting open keeps its end here until its retry."""
    cond = t.kernel.sched.cond
    names = names_of(t.kernel)
    access = flags & O_ACCMODE
    if access == O_ACCMODE:
        return E.INVAL
    key = (node.key, access)
    thread = t.thread
    with cond:
        pending = _FIFO_OPENS.pop(thread, None)
        if pending is not None and pending[0] != key:
            pending[1].close()                  # an open that ended otherwise (a signal)
            pending = None
        if pending is not None:
            end, seen = pending[1], pending[2]
            buf = end.buf
        else:
            found = names.fifos.get(node.key)
            if found is None:
                found = names.fifos[node.key] = PipeBuffer(cond)
            buf = found
            if access == 1 and not buf.readers and flags & O_NONBLOCK:
                return -errno.ENXIO
            seen = buf.opened_writers if access == 0 else buf.opened_readers
            end = PipeEnd(flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC), buf, access == 1,
                          node.gpath)
        if access == 0:
            ready = buf.writers > 0 or bool(flags & O_NONBLOCK) or buf.opened_writers != seen
        elif access == 1:
            ready = buf.readers > 0 or buf.opened_readers != seen
        else:
            ready = True
        if not ready:
            _FIFO_OPENS[thread] = (key, end, seen)
            return waitq.park(t, [buf.queue])
    try:
        return t.fds.add(end, cloexec=bool(flags & O_CLOEXEC))
    except OSError:
        end.close()
        raise


_FIFO_OPENS: weakref.WeakKeyDictionary[GuestThread, tuple[tuple[object, ...], PipeEnd, int]] = \
    weakref.WeakKeyDictionary()
