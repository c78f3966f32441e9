"""The overlay seen through held directory descriptors.

A guest directory is a ``Level``: its guest path plus an ``O_PATH`` descriptor for the upper
layer's directory and one for the lower layer's (either may be absent). Names are looked up
with ``fstatat(AT_SYMLINK_NOFOLLOW)`` relative to those descriptors and directories are entered
with ``openat(O_PATH|O_DIRECTORY|O_NOFOLLOW)``, so the host kernel never follows a symlink and a
concurrent rename cannot move an operation to another host directory: it can only make it fail.

Deleting a lower entry leaves an aufs-style whiteout (``.wh.NAME``) in the upper layer; a
directory re-created over a whiteout is marked opaque (``.wh..wh..opq``) so the lower one's
entries stay hidden.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["WH_PREFIX", "OPAQUE", "VIRTUAL_DEVICES", "VIRTUAL_DIRS", "EXE_LINK", "NAME_MAX",
           "Level", "Entry", "FdScope", "err", "lstat_at", "lookup", "descend", "scan_dir",
           "merged_entries", "dtype_of", "O_DIR"]

WH_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
NAME_MAX = 255
EXE_LINK = "/proc/self/exe"
VIRTUAL_DEVICES = {"/dev/null": (1, 3), "/dev/zero": (1, 5), "/dev/random": (1, 8),
                   "/dev/urandom": (1, 9)}
VIRTUAL_DIRS = {"/dev", "/proc", "/proc/self"}
O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def err(code: int) -> OSError:
    """An OSError for the guest (no host path in it)."""
    return OSError(code, os.strerror(code))


def lstat_at(dir_fd: int | None, name: str) -> os.stat_result | None:
    """lstat of ``name`` in the directory ``dir_fd``, or None when there is nothing there."""
    if dir_fd is None:
        return None
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:   # e.g. the whiteout of a 252..255-byte name
            return None
        raise


def dtype_of(mode: int) -> int:
    """The getdents d_type of a file mode."""
    return {stat.S_IFDIR: 4, stat.S_IFREG: 8, stat.S_IFLNK: 10, stat.S_IFCHR: 2,
            stat.S_IFIFO: 1, stat.S_IFSOCK: 12, stat.S_IFBLK: 6}.get(stat.S_IFMT(mode), 0)


class FdScope:
    """Descriptors opened during one operation; all closed when it ends."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def open_dir(self, dir_fd: int, name: str) -> int:
        fd = os.open(name, O_DIR, dir_fd=dir_fd)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


@dataclass
class Level:
    """A guest directory reached by a walk, with the layer directories that make it up."""

    gpath: str            # "/" for the root
    name: str             # its name in its parent ("" for the root)
    upper: int | None     # O_PATH fd of the upper layer's directory, if it has one
    lower: int | None     # O_PATH fd of the lower layer's directory, if visible

    def child(self, name: str) -> str:
        return ("" if self.gpath == "/" else self.gpath) + "/" + name


@dataclass
class Entry:
    """What a name in a Level is: its lstat in each layer, whiteout state and virtual kind."""

    parent: Level
    name: str
    gpath: str
    upper: os.stat_result | None     # the upper layer's entry
    lower: os.stat_result | None     # the lower layer's entry, unless a whiteout hides it
    whiteout: bool                   # the upper layer holds .wh.NAME
    virtual: str | None              # "dev", "dir", "exe", or "link"/"proc" (procfs.py)

    @property
    def st(self) -> os.stat_result | None:
        """The visible host entry: the upper one if any, else the lower one."""
        return self.upper if self.upper is not None else self.lower

    @property
    def exists(self) -> bool:
        return self.virtual is not None or self.st is not None

    @property
    def is_dir(self) -> bool:
        if self.virtual is not None:
            return self.virtual == "dir"
        st = self.st
        return st is not None and stat.S_ISDIR(st.st_mode)

    @property
    def is_link(self) -> bool:
        if self.virtual is not None:
            return self.virtual in ("exe", "link")
        st = self.st
        return st is not None and stat.S_ISLNK(st.st_mode)

    @property
    def in_upper(self) -> bool:
        return self.upper is not None

    @property
    def layer_fd(self) -> int | None:
        """The directory fd of the layer that holds the visible entry."""
        return self.parent.upper if self.upper is not None else self.parent.lower


def _virtual(gpath: str) -> str | None:
    if gpath in VIRTUAL_DEVICES:
        return "dev"
    if gpath in VIRTUAL_DIRS:
        return "dir"
    return "exe" if gpath == EXE_LINK else None


def lookup(level: Level, name: str) -> Entry:
    """The entry ``name`` in ``level`` (names starting with .wh. are never visible)."""
    gpath = level.child(name)
    if name.startswith(WH_PREFIX):
        return Entry(level, name, gpath, None, None, False, None)
    up = lstat_at(level.upper, name)
    whiteout = level.lower is not None and lstat_at(level.upper, WH_PREFIX + name) is not None
    low = None if whiteout else lstat_at(level.lower, name)
    return Entry(level, name, gpath, up, low, whiteout, _virtual(gpath))


def descend(scope: FdScope, entry: Entry) -> Level:
    """The Level for the directory ``entry`` (which must be a directory)."""
    up = low = None
    opaque = False
    if entry.upper is not None:
        if not stat.S_ISDIR(entry.upper.st_mode):
            if entry.virtual == "dir":
                return Level(entry.gpath, entry.name, None, None)
            raise err(errno.ENOTDIR)
        assert entry.parent.upper is not None
        up = scope.open_dir(entry.parent.upper, entry.name)
        opaque = lstat_at(up, OPAQUE) is not None
    if not opaque and entry.lower is not None and stat.S_ISDIR(entry.lower.st_mode):
        assert entry.parent.lower is not None
        low = scope.open_dir(entry.parent.lower, entry.name)
    return Level(entry.gpath, entry.name, up, low)


def scan_dir(dir_fd: int) -> Iterator[tuple[str, os.stat_result]]:
    """(name, lstat) of every entry of the directory ``dir_fd`` (an O_PATH fd is fine)."""
    fd = os.open(".", O_LIST, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            for ent in it:
                yield ent.name, ent.stat(follow_symlinks=False)
    finally:
        os.close(fd)


def merged_entries(level: Level) -> list[tuple[str, int, int]]:
    """(name, d_type, inode) of the directory's visible entries, without . and .."""
    names: dict[str, tuple[int, int]] = {}
    whiteouts: set[str] = set()
    if level.upper is not None:
        for name, st in scan_dir(level.upper):
            if name.startswith(WH_PREFIX):
                whiteouts.add(name[len(WH_PREFIX):])
            else:
                names[name] = (dtype_of(st.st_mode), st.st_ino)
    if level.lower is not None:
        for name, st in scan_dir(level.lower):
            if not name.startswith(WH_PREFIX) and name not in names and name not in whiteouts:
                names[name] = (dtype_of(st.st_mode), st.st_ino)
    for vpath in [*VIRTUAL_DEVICES, *sorted(VIRTUAL_DIRS), EXE_LINK]:
        head, _, name = vpath.rpartition("/")
        if (head or "/") == level.gpath and name not in names:
            names[name] = (2 if vpath in VIRTUAL_DEVICES else 4, 1)
    return [(name, dt, ino) for name, (dt, ino) in names.items()]
