"""File and directory syscalls (architecture-neutral; layouts come from the Abi).

Paths are resolved and acted on in one step (paths.py). chmod, chown and the
utime family change nothing (the sandbox keeps no ownership or times of its own): they only
check that the path exists, through the same walk."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi import pack_statx
from ..files import DirFile, StatInfo
from .common import E, s32, s64
from .io import writable_file
from .paths import path_at, read_path, sandbox

if TYPE_CHECKING:
    from ..task import Task

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = 0x100, 0x200, 0x400, 0x1000
O_CREAT, O_TRUNC, O_CLOEXEC = 0o100, 0o1000, 0o2000000
MAX_IO = 16 << 20





def sys_openat(t: Task, dirfd: int, ptr: int, flags: int, mode: int, *_: int) -> int:
    flags &= 0xFFFFFFFF
    path, base = path_at(t, dirfd, ptr)
    file = sandbox(t).open(path, base, flags, mode)
    try:
        return t.fds.add(file, cloexec=bool(flags & O_CLOEXEC))
    except OSError:
        file.close()
        raise


def sys_open(t: Task, ptr: int, flags: int, mode: int, *_: int) -> int:
    return sys_openat(t, AT_FDCWD, ptr, flags, mode)


def sys_creat(t: Task, ptr: int, mode: int, *_: int) -> int:
    return sys_openat(t, AT_FDCWD, ptr, O_CREAT | O_TRUNC | 1, mode)


def sys_close(t: Task, fd: int, *_: int) -> int:
    t.fds.close(s32(fd))
    return 0


def _put_stat(t: Task, buf: int, info: StatInfo) -> int:
    t.mem.write(buf, t.abi.pack_stat(info))
    return 0


def sys_fstat(t: Task, fd: int, buf: int, *_: int) -> int:
    return _put_stat(t, buf, t.fds.get(s32(fd)).stat())


def _empty_path(t: Task, ptr: int, flags: int) -> bool:
    return bool(flags & AT_EMPTY_PATH) and t.mem.read(ptr, 1) == b"\0"


def _stat_at(t: Task, dirfd: int, ptr: int, flags: int) -> StatInfo:
    if _empty_path(t, ptr, flags):
        if s32(dirfd) == AT_FDCWD:
            return sandbox(t).stat_at(t.process.cwd, "/")
        return t.fds.get(s32(dirfd)).stat()
    path, base = path_at(t, dirfd, ptr)
    return sandbox(t).stat_at(path, base, follow=not flags & AT_SYMLINK_NOFOLLOW)


def sys_newfstatat(t: Task, dirfd: int, ptr: int, buf: int, flags: int, *_: int) -> int:
    return _put_stat(t, buf, _stat_at(t, dirfd, ptr, flags))


def sys_stat(t: Task, ptr: int, buf: int, *_: int) -> int:
    return _put_stat(t, buf, _stat_at(t, AT_FDCWD, ptr, 0))


def sys_lstat(t: Task, ptr: int, buf: int, *_: int) -> int:
    return _put_stat(t, buf, _stat_at(t, AT_FDCWD, ptr, AT_SYMLINK_NOFOLLOW))


def sys_statx(t: Task, dirfd: int, ptr: int, flags: int, mask: int, buf: int, *_: int) -> int:
    t.mem.write(buf, pack_statx(_stat_at(t, dirfd, ptr, flags)))
    return 0


def sys_getdents64(t: Task, fd: int, buf: int, count: int, *_: int) -> int:
    file = t.fds.get(s32(fd))
    if not isinstance(file, DirFile):
        return E.NOTDIR
    out = bytearray()
    while file.pos < len(file.entries):
        name, dtype, ino = file.entries[file.pos]
        raw = name.encode("utf-8", "surrogateescape") + b"\0"
        reclen = (19 + len(raw) + 7) & ~7
        if len(out) + reclen > count:
            if not out:
                return E.INVAL
            break
        rec = struct.pack("<QqHB", ino or 1, file.pos + 1, reclen, dtype) + raw
        out += rec + bytes(reclen - len(rec))
        file.pos += 1
    t.mem.write(buf, bytes(out))
    return len(out)


def sys_mkdirat(t: Task, dirfd: int, ptr: int, mode: int, *_: int) -> int:
    path, base = path_at(t, dirfd, ptr)
    sandbox(t).mkdir_at(path, base, mode)
    return 0


def sys_mkdir(t: Task, ptr: int, mode: int, *_: int) -> int:
    return sys_mkdirat(t, AT_FDCWD, ptr, mode)


def sys_unlinkat(t: Task, dirfd: int, ptr: int, flags: int, *_: int) -> int:
    if flags & ~AT_REMOVEDIR:
        return E.INVAL
    path, base = path_at(t, dirfd, ptr)
    sandbox(t).remove_at(path, base, bool(flags & AT_REMOVEDIR))
    return 0


def sys_unlink(t: Task, ptr: int, *_: int) -> int:
    return sys_unlinkat(t, AT_FDCWD, ptr, 0)


def sys_rmdir(t: Task, ptr: int, *_: int) -> int:
    return sys_unlinkat(t, AT_FDCWD, ptr, AT_REMOVEDIR)


def sys_renameat2(t: Task, olddir: int, old: int, newdir: int, new: int, flags: int,
                  *_: int) -> int:
    src, src_base = path_at(t, olddir, old)
    dst, dst_base = path_at(t, newdir, new)
    sandbox(t).rename_at(src, src_base, dst, dst_base, flags & 0xFFFFFFFF)
    return 0


def sys_renameat(t: Task, olddir: int, old: int, newdir: int, new: int, *_: int) -> int:
    return sys_renameat2(t, olddir, old, newdir, new, 0)


def sys_rename(t: Task, old: int, new: int, *_: int) -> int:
    return sys_renameat2(t, AT_FDCWD, old, AT_FDCWD, new, 0)


def sys_linkat(t: Task, olddir: int, old: int, newdir: int, new: int, flags: int,
               *_: int) -> int:
    if flags & ~AT_SYMLINK_FOLLOW:
        return E.INVAL
    src, src_base = path_at(t, olddir, old)
    dst, dst_base = path_at(t, newdir, new)
    sandbox(t).link_at(src, src_base, dst, dst_base, bool(flags & AT_SYMLINK_FOLLOW))
    return 0


def sys_link(t: Task, old: int, new: int, *_: int) -> int:
    return sys_linkat(t, AT_FDCWD, old, AT_FDCWD, new, 0)


def sys_symlinkat(t: Task, target: int, dirfd: int, ptr: int, *_: int) -> int:
    text = read_path(t, target)
    path, base = path_at(t, dirfd, ptr)
    sandbox(t).symlink_at(text, path, base)
    return 0


def sys_symlink(t: Task, target: int, ptr: int, *_: int) -> int:
    return sys_symlinkat(t, target, AT_FDCWD, ptr)


def sys_readlinkat(t: Task, dirfd: int, ptr: int, buf: int, size: int, *_: int) -> int:
    if s32(size) <= 0:
        return E.INVAL
    path, base = path_at(t, dirfd, ptr)
    target = sandbox(t).readlink_at(path, base)
    raw = target.encode("utf-8", "surrogateescape")[:size]
    t.mem.write(buf, raw)
    return len(raw)


def sys_readlink(t: Task, ptr: int, buf: int, size: int, *_: int) -> int:
    return sys_readlinkat(t, AT_FDCWD, ptr, buf, size)


def sys_faccessat(t: Task, dirfd: int, ptr: int, mode: int, *_: int) -> int:
    path, base = path_at(t, dirfd, ptr)
    sandbox(t).access_at(path, base)
    return 0


def sys_faccessat2(t: Task, dirfd: int, ptr: int, mode: int, flags: int, *_: int) -> int:
    if _empty_path(t, ptr, flags) and s32(dirfd) != AT_FDCWD:
        t.fds.get(s32(dirfd))
        return 0
    path, base = path_at(t, dirfd, ptr)
    sandbox(t).access_at(path, base, follow=not flags & AT_SYMLINK_NOFOLLOW)
    return 0


def sys_access(t: Task, ptr: int, mode: int, *_: int) -> int:
    return sys_faccessat(t, AT_FDCWD, ptr, mode)


def sys_getcwd(t: Task, buf: int, size: int, *_: int) -> int:
    raw = t.process.cwd.encode("utf-8", "surrogateescape") + b"\0"
    if len(raw) > size:
        return E.RANGE
    t.mem.write(buf, raw)
    return len(raw)


def sys_chdir(t: Task, ptr: int, *_: int) -> int:
    path, base = path_at(t, AT_FDCWD, ptr)
    t.process.cwd = sandbox(t).chdir_at(path, base)
    return 0


def sys_fchdir(t: Task, fd: int, *_: int) -> int:
    file = t.fds.get(s32(fd))
    if not isinstance(file, DirFile):
        return E.NOTDIR
    t.process.cwd = file.gpath
    return 0


def do_ftruncate(t: Task, fd: int, length: int) -> int:
    """ftruncate with a signed length (the callers decode the ABI's width)."""
    if length < 0:
        return E.INVAL
    writable_file(t, fd).truncate(length)
    return 0


def do_truncate(t: Task, ptr: int, length: int) -> int:
    if length < 0:
        return E.INVAL
    path, base = path_at(t, AT_FDCWD, ptr)
    sandbox(t).truncate(path, base, length)
    return 0


def _long(t: Task, value: int) -> int:
    return s64(value) if t.is64 else s32(value)


def sys_ftruncate(t: Task, fd: int, length: int, *_: int) -> int:
    return do_ftruncate(t, fd, _long(t, length))


def sys_truncate(t: Task, ptr: int, length: int, *_: int) -> int:
    return do_truncate(t, ptr, _long(t, length))


def sys_exists_ok(t: Task, ptr: int, *_: int) -> int:
    """chmod/chown/utime/utimes: succeed when the path exists."""
    path, base = path_at(t, AT_FDCWD, ptr)
    sandbox(t).access_at(path, base)
    return 0


def sys_lexists_ok(t: Task, ptr: int, *_: int) -> int:
    """lchown: succeed when the path exists (a final symlink is not followed)."""
    path, base = path_at(t, AT_FDCWD, ptr)
    sandbox(t).access_at(path, base, follow=False)
    return 0


def _at_exists(t: Task, dirfd: int, ptr: int, flags: int, allowed: int) -> int:
    if flags & ~allowed:
        return E.INVAL
    if _empty_path(t, ptr, flags):
        if s32(dirfd) != AT_FDCWD:
            t.fds.get(s32(dirfd))
        return 0
    path, base = path_at(t, dirfd, ptr)
    sandbox(t).access_at(path, base, follow=not flags & AT_SYMLINK_NOFOLLOW)
    return 0


def sys_fchmodat(t: Task, dirfd: int, ptr: int, mode: int, *_: int) -> int:
    return _at_exists(t, dirfd, ptr, 0, 0)


def sys_fchownat(t: Task, dirfd: int, ptr: int, owner: int, group: int, flags: int,
                 *_: int) -> int:
    return _at_exists(t, dirfd, ptr, flags, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)


def sys_utimensat(t: Task, dirfd: int, ptr: int, times: int, flags: int, *_: int) -> int:
    if ptr == 0:                                # futimens(dirfd)
        t.fds.get(s32(dirfd))
        return 0
    return _at_exists(t, dirfd, ptr, flags, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)


def sys_futimesat(t: Task, dirfd: int, ptr: int, *_: int) -> int:
    return _at_exists(t, dirfd, ptr, 0, 0)
