"""Path arguments: reading them from the guest and naming their base directory.

Every path-taking call hands the guest's path (read with a PATH_MAX bound) and its base
directory to one Sandbox method, which resolves and acts in a single step through held
directory descriptors; nothing here resolves a path and acts on it later."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from ..files import DirFile
from ..fs import PATH_MAX, Sandbox
from ..memory import GuestFault
from .common import s32

if TYPE_CHECKING:
    from ..task import Task

AT_FDCWD = -100

def sandbox(t: Task) -> Sandbox:
    """The partition's sandbox, bound to its spec's quota and open files on first use."""
    fs = t.kernel.fs
    if not fs.bound:
        fds = t.fds
        with fds.lock:
            files = list(fds.files.values())
        fs.bind(t.kernel.spec.disk_bytes, files)
    fs.procfs.kernel = t.kernel
    fs.procfs.caller(t.process.pid, t.thread.tid)
    return fs


def read_path(t: Task, ptr: int) -> str:
    """A path argument: at most PATH_MAX bytes are read (ENAMETOOLONG past that, EFAULT
    when the string runs into memory the guest does not have)."""
    try:
        raw = t.mem.read_cstr(ptr, PATH_MAX)
    except GuestFault:
        t.mem.read(ptr, PATH_MAX)             # EFAULT unless all PATH_MAX bytes are there
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)) from None
    return raw.decode("utf-8", "surrogateescape")


def _base_dir(t: Task, dirfd: int, path: str) -> str:
    if path.startswith("/") or s32(dirfd) == AT_FDCWD:
        return t.process.cwd
    file = t.fds.get(s32(dirfd))
    if not isinstance(file, DirFile):
        raise OSError(errno.ENOTDIR, "not a directory")
    return file.gpath


def path_at(t: Task, dirfd: int, ptr: int) -> tuple[str, str]:
    """(path, base directory) of a path argument relative to ``dirfd``."""
    path = read_path(t, ptr)
    return path, _base_dir(t, dirfd, path)


def resolve_at(t: Task, dirfd: int, ptr: int, follow: bool = True) -> str:
    """The normalised guest path a path argument names (for callers that keep a name)."""
    path, base = path_at(t, dirfd, ptr)
    return sandbox(t).resolve(path, base, follow)
