"""What programs ask about files beyond stat: statfs, extended attributes, fadvise.

Dynamically linked Debian programs call these at start (libselinux's statfs, ls's ACL
check through getxattr, sort's and cat's fadvise); an ENOSYS there is printed as an error.
The sandbox keeps no extended attributes, so every lookup is ENODATA and every list empty;
statfs describes the overlay with the partition's disk quota as its size.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from ..files import PipeEnd
from .common import E, s32
from .paths import path_at, read_path, sandbox

if TYPE_CHECKING:
    from ..task import Task

__all__ = ["sys_statfs", "sys_fstatfs", "sys_statfs64", "sys_fstatfs64", "sys_getxattr",
           "sys_lgetxattr", "sys_fgetxattr", "sys_listxattr", "sys_llistxattr",
           "sys_flistxattr", "do_fadvise"]

AT_FDCWD = -100
OVERLAYFS_MAGIC = 0x794C7630
ST_VALID = 0x20
BLOCK = 4096
NAME_MAX = 255
XATTR_NAME_MAX = 255
POSIX_FADV_NOREUSE = 5
#: struct statfs: x86_64 (all longs, fsid two ints), i386 (32-bit fields); i386's statfs64
#: has 64-bit counts and is packed to 4 bytes (84 bytes).
_STATFS64 = struct.Struct("<qqqqqqqiiqqq4q")
_STATFS32 = struct.Struct("<IIIIIIIiiIII4I")
_STATFS64_I386 = struct.Struct("<IIQQQQQiiIII4I")


def _numbers(t: Task) -> tuple[int, int, int, int, int]:
    """(blocks, free blocks, files, free files, fsid) from the partition's disk quota."""
    quota = sandbox(t).quota
    blocks = quota.limit // BLOCK
    free = max(0, quota.limit - quota.used()) // BLOCK
    return blocks, free, blocks, free, 0x56495249      # "VIRI"


def _pack(t: Task, layout: struct.Struct) -> bytes:
    blocks, free, files, ffree, fsid = _numbers(t)
    if layout is _STATFS32:                  # counts that do not fit: EOVERFLOW, as Linux
        if max(blocks, files) > 0xFFFFFFFF:
            raise OSError(errno.EOVERFLOW, "value too large for the 32-bit statfs")
    return layout.pack(OVERLAYFS_MAGIC, BLOCK, blocks, free, free, files, ffree, fsid, 0,
                       NAME_MAX, BLOCK, ST_VALID, 0, 0, 0, 0)


def _layout(t: Task) -> struct.Struct:
    return _STATFS64 if t.is64 else _STATFS32


def _check_path(t: Task, ptr: int, follow: bool = True) -> None:
    path, base = path_at(t, AT_FDCWD, ptr)
    sandbox(t).stat_at(path, base, follow=follow)      # ENOENT, ENOTDIR, ELOOP, ...


def sys_statfs(t: Task, ptr: int, buf: int, *_: int) -> int:
    _check_path(t, ptr)
    t.mem.write(buf, _pack(t, _layout(t)))
    return 0


def sys_fstatfs(t: Task, fd: int, buf: int, *_: int) -> int:
    t.fds.get(s32(fd))
    t.mem.write(buf, _pack(t, _layout(t)))
    return 0


def sys_statfs64(t: Task, ptr: int, size: int, buf: int, *_: int) -> int:
    """i386: the caller passes the size of its struct statfs64 (84)."""
    if size != _STATFS64_I386.size:
        return E.INVAL
    _check_path(t, ptr)
    t.mem.write(buf, _pack(t, _STATFS64_I386))
    return 0


def sys_fstatfs64(t: Task, fd: int, size: int, buf: int, *_: int) -> int:
    if size != _STATFS64_I386.size:
        return E.INVAL
    t.fds.get(s32(fd))
    t.mem.write(buf, _pack(t, _STATFS64_I386))
    return 0


def _check_name(t: Task, ptr: int) -> int:
    """Attribute names are read like paths; an empty or over-long one is ERANGE."""
    name = read_path(t, ptr)
    if not name or len(name.encode("utf-8", "surrogateescape")) > XATTR_NAME_MAX:
        return E.RANGE
    return 0


def _getxattr(t: Task, ptr: int, name: int, follow: bool) -> int:
    _check_path(t, ptr, follow)
    return _check_name(t, name) or -errno.ENODATA


def sys_getxattr(t: Task, ptr: int, name: int, *_: int) -> int:
    return _getxattr(t, ptr, name, True)


def sys_lgetxattr(t: Task, ptr: int, name: int, *_: int) -> int:
    return _getxattr(t, ptr, name, False)


def sys_fgetxattr(t: Task, fd: int, name: int, *_: int) -> int:
    t.fds.get(s32(fd))
    return _check_name(t, name) or -errno.ENODATA


def sys_listxattr(t: Task, ptr: int, *_: int) -> int:
    _check_path(t, ptr)
    return 0


def sys_llistxattr(t: Task, ptr: int, *_: int) -> int:
    _check_path(t, ptr, follow=False)
    return 0


def sys_flistxattr(t: Task, fd: int, *_: int) -> int:
    t.fds.get(s32(fd))
    return 0


def do_fadvise(t: Task, fd: int, advice: int) -> int:
    """Advice only: the descriptor is checked (EBADF, ESPIPE for a pipe) and nothing done."""
    file = t.fds.get(s32(fd))
    if isinstance(file, PipeEnd):
        return E.SPIPE
    if not 0 <= s32(advice) <= POSIX_FADV_NOREUSE:
        return E.INVAL
    return 0
