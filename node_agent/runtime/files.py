"""Open files and the guest's file-descriptor table."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .spec import Console

if TYPE_CHECKING:
    from .upper_quota import UpperQuota

__all__ = ["StatInfo", "OpenFile", "HostFile", "DirFile", "DeviceFile", "ConsoleFile",
           "PipeBuffer", "PipeEnd", "FdTable", "MAX_FDS"]

MAX_FDS = 1024
O_ACCMODE, O_WRONLY, O_RDWR, O_APPEND, O_NONBLOCK = 3, 1, 2, 0o2000, 0o4000


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

    def __init__(self, flags: int, gpath: str = "") -> None:
        self.flags = flags
        self.gpath = gpath
        self.refs = 0

    @property
    def readable(self) -> bool:
        return self.flags & O_ACCMODE != O_WRONLY

    @property
    def writable(self) -> bool:
        return self.flags & O_ACCMODE in (O_WRONLY, O_RDWR)

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

    def stat(self) -> StatInfo:
        return StatInfo.synthetic(stat.S_IFIFO | 0o600, ino=10 + self.fd)


class PipeBuffer:
    """The buffer between the two ends of a pipe (no fork: both ends are in this process)."""

    LIMIT = 1 << 16

    def __init__(self) -> None:
        self.data = bytearray()
        self.readers = 0
        self.writers = 0
        self.lock = threading.Lock()


class PipeEnd(OpenFile):
    """A non-blocking-in-practice pipe end: reading an empty pipe with writers gives EAGAIN."""

    def __init__(self, flags: int, buf: PipeBuffer, write_end: bool) -> None:
        super().__init__(flags | (O_WRONLY if write_end else 0), "pipe:")
        self.buf = buf
        self.write_end = write_end
        if write_end:
            buf.writers += 1
        else:
            buf.readers += 1

    def read(self, n: int) -> bytes:
        with self.buf.lock:
            if not self.buf.data and self.buf.writers:
                raise OSError(11, "would block")
            out = bytes(self.buf.data[:n])
            del self.buf.data[:n]
            return out

    def write(self, data: bytes) -> int:
        with self.buf.lock:
            if not self.buf.readers:
                raise OSError(32, "broken pipe")
            room = self.buf.LIMIT - len(self.buf.data)
            if room <= 0:
                raise OSError(11, "would block")
            self.buf.data += data[:room]
            return min(room, len(data))

    def stat(self) -> StatInfo:
        return StatInfo.synthetic(stat.S_IFIFO | 0o600, ino=id(self.buf) & 0xFFFFFF)

    def close(self) -> None:
        with self.buf.lock:
            if self.write_end:
                self.buf.writers -= 1
            else:
                self.buf.readers -= 1


class FdTable:
    """Guest descriptor numbers -> open files, with close-on-exec flags."""

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
            fd = minimum
            while fd in self.files:
                fd += 1
            if fd >= MAX_FDS:
                raise OSError(24, "too many open files")
            self._install(fd, file, cloexec)
            return fd

    def _install(self, fd: int, file: OpenFile, cloexec: bool) -> None:
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
            if old == new:
                return new
            self._close_locked(new)
            self._install(new, file, cloexec)
            return new

    def close(self, fd: int) -> None:
        with self.lock:
            if fd not in self.files:
                raise OSError(9, "bad file descriptor")
            self._close_locked(fd)

    def _close_locked(self, fd: int) -> None:
        file = self.files.pop(fd, None)
        self.cloexec.discard(fd)
        if file is not None:
            file.refs -= 1
            if file.refs == 0:
                file.close()

    def close_all(self) -> None:
        with self.lock:
            for fd in list(self.files):
                self._close_locked(fd)
