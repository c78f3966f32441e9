"""Open files and the guest's file-descriptor table."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .spec import Console

if TYPE_CHECKING:
    from .upper_quota import UpperQuota
    from .waitq import WaitQueue

__all__ = ["StatInfo", "OpenFile", "HostFile", "DirFile", "DeviceFile", "ConsoleFile",
           "PipeBuffer", "PipeEnd", "FifoNode", "FdTable", "MAX_FDS", "PIPE_BUF",
           "POLLIN", "POLLPRI", "POLLOUT", "POLLERR", "POLLHUP", "POLLNVAL", "POLLRDHUP"]

MAX_FDS = 1024
O_ACCMODE, O_WRONLY, O_RDWR, O_APPEND, O_NONBLOCK = 3, 1, 2, 0o2000, 0o4000
POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
POLLRDNORM, POLLWRNORM, POLLRDHUP = 0x40, 0x100, 0x2000
PIPE_BUF = 4096
_REFS = threading.Lock()       # open descriptions are shared between processes' tables


@dataclass(frozen=True)
class StatInfo:
    """Architecture-neutral ``struct stat`` contents."""

    dev: int
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_host(cls, st: os.stat_result) -> StatInfo:
        return cls(dev=0x801, ino=st.st_ino, mode=st.st_mode, nlink=st.st_nlink, uid=0, gid=0,
                   rdev=0, size=st.st_size, blksize=4096, blocks=st.st_blocks,
                   atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)

    @classmethod
    def synthetic(cls, mode: int, rdev: int = 0, ino: int = 1) -> StatInfo:
        now = time.time_ns()
        return cls(dev=5, ino=ino, mode=mode, nlink=1, uid=0, gid=0, rdev=rdev, size=0,
                   blksize=4096, blocks=0, atime_ns=now, mtime_ns=now, ctime_ns=now)


class OpenFile:
    """An open file description (shared by dup'ed descriptors)."""

    seekable = False
    is_tty = False
    #: read/write may raise EAGAIN to mean "would block": the caller parks the thread on
    #: ``wait_queues()`` under the scheduler's lock (unless the description is O_NONBLOCK).
    blocking = False
    #: a write moves all of its data or none (a message, an eventfd value): never split.
    message_writes = False

    def __init__(self, flags: int, gpath: str = "") -> None:
        self.flags = flags
        self.gpath = gpath
        self.refs = 0
        self.released = False          # its last descriptor closed (epoll drops it)

    @property
    def readable(self) -> bool:
        return self.flags & O_ACCMODE != O_WRONLY

    @property
    def writable(self) -> bool:
        return self.flags & O_ACCMODE in (O_WRONLY, O_RDWR)

    @property
    def nonblocking(self) -> bool:
        return bool(self.flags & O_NONBLOCK)

    def poll_mask(self) -> int:
        """Ready events now (caller holds the scheduler's lock for blocking files). A file
        that never blocks is always ready, as a regular file is on Linux."""
        return POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM

    def wait_queues(self) -> list[WaitQueue]:
        """Queues woken when ``poll_mask`` may change (none: it never does)."""
        return []

    def unread(self) -> int:
        """Bytes a read would return now (FIONREAD); ENOTTY where that means nothing."""
        raise OSError(errno.ENOTTY, "not a stream")

    def read(self, n: int) -> bytes:
        raise OSError(22, "not readable")

    def write(self, data: bytes) -> int:
        raise OSError(22, "not writable")

    def pread(self, n: int, offset: int) -> bytes:
        raise OSError(29, "illegal seek")

    def pwrite(self, data: bytes, offset: int) -> int:
        raise OSError(29, "illegal seek")

    def seek(self, offset: int, whence: int) -> int:
        raise OSError(29, "illegal seek")

    def stat(self) -> StatInfo:
        return StatInfo.synthetic(stat.S_IFCHR | 0o666)

    def truncate(self, size: int) -> None:
        raise OSError(22, "invalid argument")

    def close(self) -> None:
        pass


class HostFile(OpenFile):
    """A regular file of the sandbox, backed by a host descriptor.

    With a quota attached, writes and size changes are charged to the writable layer's quota
    (a restore reopens files without one; the sandbox attaches it before the first syscall)."""

    seekable = True

    def __init__(self, fd: int, flags: int, gpath: str, quota: UpperQuota | None = None) -> None:
        super().__init__(flags, gpath)
        self.fd = fd
        self.append = bool(flags & O_APPEND)      # as the host descriptor was opened
        self.quota: UpperQuota | None = None
        if quota is not None:
            self.attach(quota)

    def attach(self, quota: UpperQuota) -> None:
        self.quota = quota
        quota.opened(self.fd)

    def read(self, n: int) -> bytes:
        return os.read(self.fd, n)

    def _check_writable(self) -> None:
        if not self.writable:
            raise OSError(errno.EBADF, "not open for writing")

    def write(self, data: bytes) -> int:
        self._check_writable()
        if self.quota is not None:
            return self.quota.write(self.fd, data, None, self.append)
        return os.write(self.fd, data)

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        self._check_writable()
        if self.quota is not None:
            return self.quota.write(self.fd, data, offset, self.append)
        return os.pwrite(self.fd, data, offset)

    def seek(self, offset: int, whence: int) -> int:
        return os.lseek(self.fd, offset, whence)

    def stat(self) -> StatInfo:
        return StatInfo.from_host(os.fstat(self.fd))

    def truncate(self, size: int) -> None:
        if not self.writable:
            raise OSError(errno.EINVAL, "not open for writing")
        if self.quota is not None:
            self.quota.resize(self.fd, size)
        else:
            os.ftruncate(self.fd, size)

    def close(self) -> None:
        try:
            if self.quota is not None:
                self.quota.closing(self.fd)
        finally:
            os.close(self.fd)


class DirFile(OpenFile):
    """An open directory: a snapshot of its merged entries, consumed by getdents."""

    seekable = True

    def __init__(self, flags: int, gpath: str, entries: list[tuple[str, int, int]],
                 info: StatInfo) -> None:
        super().__init__(flags, gpath)
        self.entries = [(".", 4, info.ino), ("..", 4, 2), *entries]
        self.pos = 0
        self.info = info

    def read(self, n: int) -> bytes:
        raise OSError(21, "is a directory")

    def seek(self, offset: int, whence: int) -> int:
        if whence != 0 or offset < 0:
            raise OSError(22, "invalid argument")
        self.pos = offset
        return offset

    def stat(self) -> StatInfo:
        return self.info


class DeviceFile(OpenFile):
    """/dev/null, /dev/zero, /dev/random, /dev/urandom."""

    seekable = True

    def __init__(self, flags: int, gpath: str, rdev: tuple[int, int]) -> None:
        super().__init__(flags, gpath)
        self.rdev = rdev

    def read(self, n: int) -> bytes:
        if self.gpath == "/dev/null":
            return b""
        if self.gpath == "/dev/zero":
            return bytes(n)
        return os.urandom(n)

    def write(self, data: bytes) -> int:
        return len(data)

    def pread(self, n: int, offset: int) -> bytes:
        return self.read(n)

    def pwrite(self, data: bytes, offset: int) -> int:
        return len(data)

    def seek(self, offset: int, whence: int) -> int:
        return 0

    def stat(self) -> StatInfo:
        major, minor = self.rdev
        return StatInfo.synthetic(stat.S_IFCHR | 0o666, rdev=(major << 8) | minor)


class ConsoleFile(OpenFile):
    """stdin/stdout/stderr: the partition's console (a pipe, not a tty)."""

    def __init__(self, flags: int, console: Console, fd: int) -> None:
        super().__init__(flags, f"/dev/console{fd}")
        self.console = console
        self.fd = fd

    def read(self, n: int) -> bytes:
        return self.console.read_stdin(n)

    def write(self, data: bytes) -> int:
        self.console.write(self.fd, data)
        return len(data)

    def poll_mask(self) -> int:
        """Output is always writable. Input is reported readable: the console cannot say
        whether data is waiting without a read (which may then park the thread)."""
        return (POLLIN | POLLRDNORM if self.readable else 0) | \
            (POLLOUT | POLLWRNORM if self.writable else 0)

    def stat(self) -> StatInfo:
        return StatInfo.synthetic(stat.S_IFIFO | 0o600, ino=10 + self.fd)


class PipeBuffer:
    """The buffer between the two ends of a pipe or FIFO, laid out as Linux's: 16 slots of
    up to a page each (64 KiB). A write first tops up the last page with its sub-page tail
    (``len % 4096`` bytes, when they fit), then fills free slots a page at a time; so writes
    of up to PIPE_BUF bytes are atomic and a full pipe holds what Linux's holds. Also the
    counts of open ends and one wait queue. Guarded by ``cond`` (the partition scheduler's
    lock), so that a check-then-park never misses a wake."""

    SLOTS = 16
    PAGE = 4096
    LIMIT = SLOTS * PAGE

    def __init__(self, cond: threading.Condition) -> None:
        from .waitq import WaitQueue

        self.cond = cond
        self.pages: deque[bytearray] = deque()
        self.size = 0
        self.readers = 0
        self.writers = 0
        self.opened_readers = 0         # ends ever opened (FIFO open waits for a change)
        self.opened_writers = 0
        self.queue = WaitQueue()

    @property
    def full(self) -> bool:
        return len(self.pages) >= self.SLOTS

    def put(self, data: bytes) -> int:
        """Store what fits of ``data`` now; bytes taken (0: the pipe is full)."""
        moved = 0
        tail = len(data) % self.PAGE
        if tail and self.pages and len(self.pages[-1]) + tail <= self.PAGE:
            self.pages[-1] += data[:tail]
            moved = tail
        while moved < len(data) and not self.full:
            piece = data[moved:moved + self.PAGE]
            self.pages.append(bytearray(piece))
            moved += len(piece)
        self.size += moved
        return moved

    def take(self, n: int) -> bytes:
        out = bytearray()
        while self.pages and len(out) < n:
            page = self.pages[0]
            want = n - len(out)
            out += page[:want]
            if want >= len(page):
                self.pages.popleft()
            else:
                del page[:want]
        self.size -= len(out)
        return bytes(out)

    def clear(self) -> None:
        self.pages.clear()
        self.size = 0


class PipeEnd(OpenFile):
    """One end of a pipe (or FIFO). read/write raise EAGAIN when they would block; the
    syscall layer parks the thread or, for O_NONBLOCK, returns the EAGAIN."""

    blocking = True

    def __init__(self, flags: int, buf: PipeBuffer, write_end: bool, gpath: str = "pipe:"
                 ) -> None:
        if flags & O_ACCMODE != O_RDWR:           # a FIFO opened O_RDWR is both ends
            flags = (flags & ~O_ACCMODE) | (O_WRONLY if write_end else 0)
        super().__init__(flags, gpath)
        self.buf = buf
        self.write_end = write_end
        with buf.cond:
            if self.readable:
                buf.readers += 1
                buf.opened_readers += 1
            if self.writable:
                buf.writers += 1
                buf.opened_writers += 1
            buf.queue.wake_all()

    def read(self, n: int) -> bytes:
        buf = self.buf
        with buf.cond:
            if not self.readable:
                raise OSError(errno.EBADF, "not open for reading")
            if not buf.size:
                if buf.writers and n:
                    raise OSError(errno.EAGAIN, "would block")
                return b""
            out = buf.take(n)
            buf.queue.wake_all()
            return out

    def write(self, data: bytes) -> int:
        """Moves what fits now (PipeBuffer.put); EAGAIN when that is nothing, EPIPE
        without a reader."""
        buf = self.buf
        with buf.cond:
            if not self.writable:
                raise OSError(errno.EBADF, "not open for writing")
            if not buf.readers:
                raise OSError(errno.EPIPE, "broken pipe")
            if not data:
                return 0
            moved = buf.put(data)
            if not moved:
                raise OSError(errno.EAGAIN, "would block")
            buf.queue.wake_all()
            return moved

    def unread(self) -> int:
        return self.buf.size

    def poll_mask(self) -> int:
        buf = self.buf
        mask = 0
        if self.readable:
            if buf.size:
                mask |= POLLIN | POLLRDNORM
            if not buf.writers and buf.opened_writers:
                mask |= POLLHUP
        if self.writable:
            if not buf.full:
                mask |= POLLOUT | POLLWRNORM
            if not buf.readers:
                mask |= POLLERR
        return mask

    def wait_queues(self) -> list[WaitQueue]:
        return [self.buf.queue]

    def stat(self) -> StatInfo:
        return StatInfo.synthetic(stat.S_IFIFO | 0o600, ino=id(self.buf) & 0xFFFFFF)

    def close(self) -> None:
        buf = self.buf
        with buf.cond:
            if self.readable:
                buf.readers -= 1
            if self.writable:
                buf.writers -= 1
            if not buf.readers and not buf.writers:
                buf.clear()                      # as Linux: a FIFO's data goes with its ends
            buf.queue.wake_all()


class FifoNode(OpenFile):
    """What the sandbox returns for a FIFO in the partition's filesystem: never a host open;
    the syscall layer serves it with an in-partition pipe keyed by ``key`` (dev, ino)."""

    def __init__(self, flags: int, gpath: str, key: tuple[int, int]) -> None:
        super().__init__(flags, gpath)
        self.key = key


class FdTable:
    """Guest descriptor numbers -> open file descriptions, with close-on-exec flags.

    Descriptions are shared: by dup within a table, and by ``fork_copy`` between the tables
    of processes. A description is closed (a pipe end released, a host fd closed) when its
    last descriptor in any table goes; that close runs outside the table's lock."""

    def __init__(self) -> None:
        self.files: dict[int, OpenFile] = {}
        self.cloexec: set[int] = set()
        self.lock = threading.Lock()

    def get(self, fd: int) -> OpenFile:
        found = self.files.get(fd)
        if found is None:
            raise OSError(9, "bad file descriptor")
        return found

    def add(self, file: OpenFile, minimum: int = 0, cloexec: bool = False) -> int:
        if not 0 <= minimum < MAX_FDS:
            raise OSError(errno.EINVAL, "descriptor number out of range")
        with self.lock:
            fd = self._free(minimum)
            self._install(fd, file, cloexec)
            return fd

    def add_pair(self, first: OpenFile, second: OpenFile, cloexec: bool = False
                 ) -> tuple[int, int]:
        """Two new descriptors or neither (pipe, socketpair): EMFILE leaves nothing open."""
        with self.lock:
            a = self._free(0)
            self._install(a, first, cloexec)
            try:
                b = self._free(0)
            except OSError:
                del self.files[a]
                self.cloexec.discard(a)
                with _REFS:
                    first.refs -= 1
                raise
            self._install(b, second, cloexec)
            return a, b

    def _free(self, minimum: int) -> int:
        fd = minimum
        while fd in self.files:
            fd += 1
        if fd >= MAX_FDS:
            raise OSError(24, "too many open files")
        return fd

    def _install(self, fd: int, file: OpenFile, cloexec: bool) -> None:
        with _REFS:
            file.refs += 1
        self.files[fd] = file
        if cloexec:
            self.cloexec.add(fd)
        else:
            self.cloexec.discard(fd)

    def dup_to(self, old: int, new: int, cloexec: bool = False) -> int:
        file = self.get(old)
        if not 0 <= new < MAX_FDS:
            raise OSError(9, "bad file descriptor")
        with self.lock:
            if self.files.get(old) is not file:
                raise OSError(9, "bad file descriptor")    # closed meanwhile
            if old == new:
                return new
            replaced = self._detach(new)
            self._install(new, file, cloexec)
        _release([replaced])
        return new

    def close(self, fd: int) -> None:
        with self.lock:
            if fd not in self.files:
                raise OSError(9, "bad file descriptor")
            file = self._detach(fd)
        _release([file])

    def _detach(self, fd: int) -> OpenFile | None:
        """Caller holds ``lock``: remove ``fd``; its description, for ``_release``."""
        self.cloexec.discard(fd)
        return self.files.pop(fd, None)

    def close_all(self) -> None:
        with self.lock:
            files = [self._detach(fd) for fd in list(self.files)]
        _release(files)

    def close_on_exec(self) -> None:
        """execve: close every descriptor marked close-on-exec."""
        with self.lock:
            files = [self._detach(fd) for fd in sorted(self.cloexec)]
        _release(files)

    def fork_copy(self) -> FdTable:
        """fork: a new table whose descriptors refer to the same open descriptions (shared
        offsets, flags, pipe ends), with the same close-on-exec flags."""
        child = FdTable()
        with self.lock:
            for fd, file in self.files.items():
                child._install(fd, file, fd in self.cloexec)
        return child


def hold_files(files: list[OpenFile]) -> None:
    """Take a reference to each of ``files`` without a descriptor (SCM_RIGHTS in flight)."""
    with _REFS:
        for file in files:
            file.refs += 1


def release_files(files: list[OpenFile]) -> None:
    """Drop references hold_files took (a message received or thrown away)."""
    _release(list(files))


def _release(files: list[OpenFile | None]) -> None:
    """Drop one reference to each of ``files``; close those that lost their last one."""
    for file in files:
        if file is None:
            continue
        with _REFS:
            file.refs -= 1
            last = file.refs == 0
        if last:
            file.released = True
            file.close()
