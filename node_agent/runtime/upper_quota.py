"""How much of the writable (upper) layer a partition uses, and the ceiling it may not pass.

Usage is the logical size of every regular file (hard links counted once, sparse files at their
full size) plus the length of every symlink's text, plus ``ENTRY_COST`` bytes for every name in
the layer: files, directories, symlinks, hard links, whiteouts and opaque markers. A guest that
made millions of empty files would otherwise fill the host's inode table for free.

It is counted once, on first use (after a restore has unpacked the layer), then kept up to date
by every change the sandbox makes. A file that is unlinked while a descriptor still holds it
keeps its bytes until the last descriptor closes, as on a real filesystem. Writes that would pass
the ceiling are cut short (what fits is written) and the next one fails with ENOSPC. Whiteouts
are charged but never refused: there can be no more of them than the image has entries, and a
full layer must still let the guest delete files.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import Counter

__all__ = ["UpperQuota", "ENTRY_COST", "DEFAULT_DISK_BYTES"]

ENTRY_COST = 512
DEFAULT_DISK_BYTES = 1 << 30

_Key = tuple[int, int]


def _key(st: os.stat_result) -> _Key:
    return st.st_dev, st.st_ino


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class UpperQuota:
    """The upper layer's usage in bytes against ``limit``; thread-safe."""

    def __init__(self, upper_fd: int, limit: int = DEFAULT_DISK_BYTES) -> None:
        self.upper_fd = upper_fd
        self.limit = limit
        self._used: int | None = None
        self._lock = threading.Lock()
        self._open: Counter[_Key] = Counter()
        self._orphans: set[_Key] = set()

    # -- totals ------------------------------------------------------------------------------
    def used(self) -> int:
        with self._lock:
            return self._count()

    def _count(self) -> int:
        if self._used is None:
            self._used = _tally(self.upper_fd)
        return self._used

    def reserve(self, n: int, *, force: bool = False) -> None:
        """Charge ``n`` bytes before creating something; ENOSPC (nothing charged) if over."""
        with self._lock:
            used = self._count()
            if n > 0 and not force and used + n > self.limit:
                raise _enospc()
            self._used = used + n

    def refund(self, n: int) -> None:
        with self._lock:
            self._used = max(0, self._count() - n)

    # -- names -------------------------------------------------------------------------------
    def name_removed(self, st: os.stat_result) -> None:
        """A name whose lstat was ``st`` has just been removed from the upper layer."""
        freed = ENTRY_COST
        with self._lock:
            used = self._count()
            if stat.S_ISLNK(st.st_mode):
                freed += st.st_size
            elif stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
                if self._open[_key(st)]:
                    self._orphans.add(_key(st))   # its bytes go when the last fd closes
                else:
                    freed += st.st_size
            self._used = max(0, used - freed)

    # -- open files --------------------------------------------------------------------------
    def opened(self, fd: int) -> None:
        with self._lock:
            self._open[_key(os.fstat(fd))] += 1

    def closing(self, fd: int) -> None:
        """Called just before the host descriptor ``fd`` of a guest file is closed."""
        st = os.fstat(fd)
        key = _key(st)
        with self._lock:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
                if key in self._orphans:
                    self._orphans.discard(key)
                    self._used = max(0, self._count() - st.st_size)

    def write(self, fd: int, data: bytes, offset: int | None, append: bool) -> int:
        """os.write / os.pwrite that stops at the ceiling (short write, then ENOSPC)."""
        with self._lock:
            used = self._count()
            st = os.fstat(fd)
            if data and stat.S_ISREG(st.st_mode):
                if append:
                    pos = st.st_size
                elif offset is None:
                    pos = os.lseek(fd, 0, os.SEEK_CUR)
                else:
                    pos = offset
                fits = st.st_size + max(0, self.limit - used) - pos
                if pos + len(data) > st.st_size and fits < len(data):
                    if fits <= 0:
                        raise _enospc()
                    data = data[:fits]
            n = os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
            grown = os.fstat(fd).st_size - st.st_size
            self._used = max(0, used + grown)
            return n

    def resize(self, fd: int, length: int) -> None:
        """ftruncate that refuses to grow the file past the ceiling."""
        if length < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        with self._lock:
            used = self._count()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            grow = length - st.st_size
            if grow > 0 and used + grow > self.limit:
                raise _enospc()
            os.ftruncate(fd, length)
            self._used = max(0, used + grow)


def _tally(upper_fd: int) -> int:
    """The usage of the tree under ``upper_fd`` (walked by descriptors, links not followed)."""
    total = 0
    seen: set[_Key] = set()
    pending = [os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=upper_fd)]
    try:
        while pending:
            fd = pending.pop()
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                for ent in entries:
                    st = ent.stat(follow_symlinks=False)
                    total += ENTRY_COST
                    if stat.S_ISREG(st.st_mode) and _key(st) not in seen:
                        seen.add(_key(st))
                        total += st.st_size
                    elif stat.S_ISLNK(st.st_mode):
                        total += st.st_size
                    elif stat.S_ISDIR(st.st_mode):
                        pending.append(os.open(ent.name, os.O_RDONLY | os.O_DIRECTORY
                                               | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd))
            finally:
                os.close(fd)
    finally:
        for fd in pending:
            os.close(fd)
    return total
