"""Reading and writing open descriptors: read, write, pread, pwrite, readv, writev,
lseek; and the blocking discipline every stream (pipe, socket, eventfd) shares.

A blocking file's read/write raises EAGAIN when it would block; here, under the scheduler's
lock, the calling thread is then parked on the file's wait queues (waitq.py) and retries the
call when the file changes, unless the description is O_NONBLOCK (the EAGAIN is returned).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import waitq
from ..files import ConsoleFile, OpenFile
from .common import E, s32, s64
from .paths import sandbox

if TYPE_CHECKING:
    from ..task import Task
    from ..waitq import WaitQueue

MAX_IO = 16 << 20
SIGPIPE = 13


def check_buffer(t: Task, addr: int, n: int) -> None:
    """EFAULT before anything is consumed from a stream, not after."""
    t.mem._off(addr, n)


def blocking_call(t: Task, file: OpenFile, attempt: Callable[[], int],
                  nonblock: bool = False, queues: list[WaitQueue] | None = None) -> int:
    """Run ``attempt`` under the scheduler's lock; if it would block (EAGAIN), park the
    thread on ``queues`` (default: ``file``'s; the call is retried on a wake) unless
    ``file`` is O_NONBLOCK or ``nonblock``."""
    if not file.blocking:
        return attempt()
    with t.kernel.sched.cond:
        try:
            return attempt()
        except OSError as exc:
            if exc.errno != errno.EAGAIN or nonblock or file.nonblocking:
                raise
            return waitq.park(t, file.wait_queues() if queues is None else queues)


def write_stream(t: Task, file: OpenFile, data: bytes, key: tuple[object, ...],
                 retry_args: tuple[int, int] | None = None, nonblock: bool = False,
                 signal: bool = True) -> int:
    """Write ``data`` to a blocking file as Linux writes a pipe or stream socket: what fits
    now, then (blocking) park for the rest. The retry's buffer/count registers are advanced
    by what moved (``retry_args``: the buffer's and the count's argument indices); its
    result counts the earlier part too (a save meanwhile returns the part moved, as an
    interruption does). Without ``retry_args`` a partial write returns its count. EPIPE
    raises SIGPIPE on the thread unless ``signal`` is False (MSG_NOSIGNAL)."""
    if not file.blocking:
        return file.write(data)
    nonblock = nonblock or file.nonblocking
    with t.kernel.sched.cond:
        done = waitq.take_progress(t, key)
        try:
            moved = file.write(data)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                if done:
                    return done
                if signal:
                    t.raise_signal(SIGPIPE)
                return E.PIPE
            if exc.errno != errno.EAGAIN:
                raise
            if nonblock:
                return done or E.AGAIN
            if done:
                waitq.keep_progress(t, key, done)
            return waitq.park(t, file.wait_queues(), partial=done or None)
        total = done + moved
        if moved >= len(data) or nonblock or retry_args is None or file.message_writes:
            return total
        buf_arg, count_arg = retry_args
        buf, count = key[-2], key[-1]
        assert isinstance(buf, int) and isinstance(count, int)
        new_key = (*key[:-2], buf + moved, count - moved)
        waitq.keep_progress(t, new_key, total)
        return waitq.park(t, file.wait_queues(),
                          args={buf_arg: buf + moved, count_arg: count - moved},
                          partial=total)


def sys_read(t: Task, fd: int, buf: int, count: int, *_: int) -> int:
    file = t.fds.get(s32(fd))
    if isinstance(file, ConsoleFile) and count:
        assert t.thread is not None
        t.mem.write(buf, b"")                 # EFAULT now rather than later
        t.mem.read(buf, min(count, 1 << 16))
        return t.kernel.read_stdin(t.thread, buf, count)
    n = min(count, MAX_IO)
    if file.blocking:
        check_buffer(t, buf, n)

    def attempt() -> int:
        data = file.read(n)
        t.mem.write(buf, data)
        return len(data)

    return blocking_call(t, file, attempt)


def writable_file(t: Task, fd: int) -> OpenFile:
    """The open file ``fd`` for a call that may grow it (its quota is attached by then).

    Only the first such call needs ``sandbox`` (which binds the quota to the open files);
    the caller identity it also records matters only to path lookups, which set it."""
    if not t.kernel.fs.bound:
        sandbox(t)
    fd &= 0xFFFFFFFF                        # s32, inlined: every write passes here
    return t.fds.get(fd - (1 << 32) if fd & 0x80000000 else fd)


def sys_write(t: Task, fd: int, buf: int, count: int, *_: int) -> int:
    if not t.kernel.fs.bound:               # writable_file, inlined: the hottest call
        sandbox(t)
    file = t.fds.get(s32(fd)) if fd & 0x80000000 else t.fds.get(fd & 0xFFFFFFFF)
    if count > MAX_IO:
        count = MAX_IO
    data = t.mem.read(buf, count)
    if not file.blocking:
        return file.write(data)
    return write_stream(t, file, data, ("write", s32(fd), buf, count), (1, 2))


def sys_pread64(t: Task, fd: int, buf: int, count: int, off: int, *_: int) -> int:
    data = t.fds.get(s32(fd)).pread(min(count, MAX_IO), s64(off))
    t.mem.write(buf, data)
    return len(data)


def sys_pwrite64(t: Task, fd: int, buf: int, count: int, off: int, *_: int) -> int:
    file = writable_file(t, fd)
    return file.pwrite(t.mem.read(buf, min(count, MAX_IO)), s64(off))


def sys_readv(t: Task, fd: int, iov: int, count: int, *_: int) -> int:
    file = t.fds.get(s32(fd))
    vecs = t.abi.iovecs(t.mem, iov, s32(count))
    if file.blocking or isinstance(file, ConsoleFile):
        # One read of the total, then scattered: a stream must not be consumed piecewise.
        total = min(sum(length for _, length in vecs), MAX_IO)
        for base, length in vecs:
            check_buffer(t, base, length)
        if isinstance(file, ConsoleFile):
            vecs = [v for v in vecs if v[1]][:1]
            return sys_read(t, fd, vecs[0][0], vecs[0][1]) if vecs else 0

        def attempt() -> int:
            data = file.read(total)
            pos = 0
            for base, length in vecs:
                piece = data[pos:pos + length]
                t.mem.write(base, piece)
                pos += len(piece)
            return len(data)

        return blocking_call(t, file, attempt)
    moved = 0
    for base, length in vecs:
        data = file.read(min(length, MAX_IO))
        t.mem.write(base, data)
        moved += len(data)
        if len(data) < length:
            break
    return moved


def sys_writev(t: Task, fd: int, iov: int, count: int, *_: int) -> int:
    file = writable_file(t, fd)
    parts: list[bytes] = []
    room = MAX_IO                               # one call moves at most MAX_IO bytes
    for base, length in t.abi.iovecs(t.mem, iov, s32(count)):
        if room <= 0:
            break
        parts.append(t.mem.read(base, min(length, room)))
        room -= len(parts[-1])
    data = b"".join(parts)
    if not file.blocking:
        return file.write(data)
    # No register to advance past a partial write: it returns its count (a short write).
    return write_stream(t, file, data, ("writev", s32(fd), iov, count))


def sys_lseek(t: Task, fd: int, off: int, whence: int, *_: int) -> int:
    bits = 64 if t.is64 else 32
    offset = s64(off) if bits == 64 else s32(off)
    return t.fds.get(s32(fd)).seek(offset, whence)
