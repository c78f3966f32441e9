"""File and directory syscalls (architecture-neutral; layouts come from the Abi).

Paths are resolved and acted on in one step (paths.py). chmod and chown record the guest's
mode and owner in the sandbox's metadata table (metadata.py), never on the host inode; the
utime family sets the upper file's own times; new files get the process's umask."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import time
from typing import TYPE_CHECKING

from ..abi import TS64, pack_statx
from ..files import DirFile, HostFile, OpenFile, StatInfo
from ..procfs import ProcDir
from .common import E, s32, s64
from .io import writable_file
from .paths import path_at, read_path, sandbox

if TYPE_CHECKING:
    from ..task import Task

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = 0x100, 0x200, 0x400, 0x1000
O_CREAT, O_TRUNC, O_CLOEXEC = 0o100, 0o1000, 0o2000000
MAX_IO = 16 << 20
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x1, 0x2, 0x10
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def create_mode(t: Task, mode: int, mask: int = 0o7777) -> int:
    """The permission bits a new node gets: ``mode`` less the process's umask."""
    return mode & mask & ~t.process.umask


def sys_openat(t: Task, dirfd: int, ptr: int, flags: int, mode: int, *_: int) -> int:
    flags &= 0xFFFFFFFF
    path, base = path_at(t, dirfd, ptr)
    file = sandbox(t).open(path, base, flags, create_mode(t, mode))
    from ..files import FifoNode  # a FIFO: an in-partition pipe, never the host's
    from .fds import open_fifo
    if isinstance(file, FifoNode):
        return open_fifo(t, file, flags)
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


def file_stat(t: Task, file: OpenFile) -> StatInfo:
    """fstat of an open file: a sandbox file with the mode and owner the guest gave it."""
    if isinstance(file, HostFile):
        return sandbox(t).file_info(file)
    return file.stat()


def sys_fstat(t: Task, fd: int, buf: int, *_: int) -> int:
    return _put_stat(t, buf, file_stat(t, t.fds.get(s32(fd))))


def _empty_path(t: Task, ptr: int, flags: int) -> bool:
    return bool(flags & AT_EMPTY_PATH) and t.mem.read(ptr, 1) == b"\0"


def _stat_at(t: Task, dirfd: int, ptr: int, flags: int) -> StatInfo:
    if _empty_path(t, ptr, flags):
        if s32(dirfd) == AT_FDCWD:
            return sandbox(t).stat_at(t.process.cwd, "/")
        return file_stat(t, t.fds.get(s32(dirfd)))
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
    if isinstance(file, ProcDir):
        file.refresh()                          # /proc/<pid>/fd as it is now
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
    sandbox(t).mkdir_at(path, base, create_mode(t, mode, 0o1777))
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
    if flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH):
        return E.INVAL
    dst, dst_base = path_at(t, newdir, new)
    if _empty_path(t, old, flags):
        # the open file itself, named by its guest path while that still names its inode
        file = t.fds.get(s32(olddir))
        if isinstance(file, DirFile):
            return E.PERM
        if not isinstance(file, HostFile):
            return E.NOENT
        key = os.fstat(file.fd)
        sandbox(t).link_at(file.gpath, "/", dst, dst_base, False,
                           inode=(key.st_dev, key.st_ino))
        return 0
    src, src_base = path_at(t, olddir, old)
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


# -- modes, owners, times --------------------------------------------------------------
def _at_target(t: Task, dirfd: int, ptr: int, flags: int,
               allowed: int) -> tuple[OpenFile | None, str, str, bool]:
    """(open file for AT_EMPTY_PATH, path, base, follow) of an *at call's target."""
    if flags & ~allowed:
        raise OSError(errno.EINVAL, "invalid flags")
    if ptr and _empty_path(t, ptr, flags):
        if s32(dirfd) == AT_FDCWD:
            return None, t.process.cwd, "/", True
        return t.fds.get(s32(dirfd)), "", "", False
    path, base = path_at(t, dirfd, ptr)
    return None, path, base, not flags & AT_SYMLINK_NOFOLLOW


def _change(t: Task, dirfd: int, ptr: int, flags: int, allowed: int, *,
            perm: int | None = None, owner: tuple[int, int] | None = None,
            times: tuple[int | None, int | None] | None = None) -> int:
    file, path, base, follow = _at_target(t, dirfd, ptr, flags, allowed)
    if file is not None:
        sandbox(t).change_file(file, perm, owner, times)
    else:
        sandbox(t).change_at(path, base, follow, perm, owner, times)
    return 0


def _fchange(t: Task, fd: int, *, perm: int | None = None,
             owner: tuple[int, int] | None = None,
             times: tuple[int | None, int | None] | None = None) -> int:
    sandbox(t).change_file(t.fds.get(s32(fd)), perm, owner, times)
    return 0


def _id(value: int, bits: int = 32) -> int:
    """A uid/gid argument: -1 (all ones) keeps the current one."""
    value &= (1 << bits) - 1
    return -1 if value == (1 << bits) - 1 else value


def sys_chmod(t: Task, ptr: int, mode: int, *_: int) -> int:
    return _change(t, AT_FDCWD, ptr, 0, 0, perm=mode)


def sys_fchmodat(t: Task, dirfd: int, ptr: int, mode: int, *_: int) -> int:
    return _change(t, dirfd, ptr, 0, 0, perm=mode)


def sys_fchmod(t: Task, fd: int, mode: int, *_: int) -> int:
    return _fchange(t, fd, perm=mode)


def sys_chown(t: Task, ptr: int, uid: int, gid: int, *_: int) -> int:
    return _change(t, AT_FDCWD, ptr, 0, 0, owner=(_id(uid), _id(gid)))


def sys_lchown(t: Task, ptr: int, uid: int, gid: int, *_: int) -> int:
    return _change(t, AT_FDCWD, ptr, AT_SYMLINK_NOFOLLOW, AT_SYMLINK_NOFOLLOW,
                   owner=(_id(uid), _id(gid)))


def sys_fchown(t: Task, fd: int, uid: int, gid: int, *_: int) -> int:
    return _fchange(t, fd, owner=(_id(uid), _id(gid)))


def sys_chown16(t: Task, ptr: int, uid: int, gid: int, *_: int) -> int:
    return _change(t, AT_FDCWD, ptr, 0, 0, owner=(_id(uid, 16), _id(gid, 16)))


def sys_lchown16(t: Task, ptr: int, uid: int, gid: int, *_: int) -> int:
    return _change(t, AT_FDCWD, ptr, AT_SYMLINK_NOFOLLOW, AT_SYMLINK_NOFOLLOW,
                   owner=(_id(uid, 16), _id(gid, 16)))


def sys_fchown16(t: Task, fd: int, uid: int, gid: int, *_: int) -> int:
    return _fchange(t, fd, owner=(_id(uid, 16), _id(gid, 16)))


def sys_fchownat(t: Task, dirfd: int, ptr: int, owner: int, group: int, flags: int,
                 *_: int) -> int:
    return _change(t, dirfd, ptr, flags, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH,
                   owner=(_id(owner), _id(group)))


def _times(t: Task, ptr: int, fmt: str, micro: bool) -> tuple[int | None, int | None]:
    """(atime, mtime) in ns from a timespec[2] (or timeval[2] when ``micro``); NULL: now.
    UTIME_OMIT keeps a time (None), UTIME_NOW is now."""
    now = time.time_ns()
    if not ptr:
        return now, now
    size = struct.calcsize(fmt)
    out: list[int | None] = []
    for i in range(2):
        sec, frac = (int(v) for v in struct.unpack(fmt, t.mem.read(ptr + i * size, size)))
        if not micro and frac == UTIME_NOW:
            out.append(now)
        elif not micro and frac == UTIME_OMIT:
            out.append(None)
        elif not 0 <= frac < (10**6 if micro else 10**9):
            raise OSError(errno.EINVAL, "invalid time")
        else:
            out.append(sec * 10**9 + frac * (1000 if micro else 1))
    return out[0], out[1]


def do_utimensat(t: Task, dirfd: int, ptr: int, times: int, flags: int, fmt: str) -> int:
    value = _times(t, times, fmt, micro=False)
    if ptr == 0:                                # futimens(dirfd)
        if flags & ~AT_SYMLINK_NOFOLLOW:
            return E.INVAL
        return _fchange(t, dirfd, times=value)
    if value == (None, None):
        _at_target(t, dirfd, ptr, flags, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)
        return 0
    return _change(t, dirfd, ptr, flags, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH, times=value)


def sys_utimensat(t: Task, dirfd: int, ptr: int, times: int, flags: int, *_: int) -> int:
    return do_utimensat(t, dirfd, ptr, times, flags, t.abi.ts_fmt)


def sys_utimensat_time64(t: Task, dirfd: int, ptr: int, times: int, flags: int,
                         *_: int) -> int:
    return do_utimensat(t, dirfd, ptr, times, flags, TS64)


def sys_futimesat(t: Task, dirfd: int, ptr: int, times: int, *_: int) -> int:
    value = _times(t, times, t.abi.ts_fmt, micro=True)
    if ptr == 0:
        return _fchange(t, dirfd, times=value)
    return _change(t, dirfd, ptr, 0, 0, times=value)


def sys_utimes(t: Task, ptr: int, times: int, *_: int) -> int:
    return sys_futimesat(t, AT_FDCWD, ptr, times)


def sys_utime(t: Task, ptr: int, buf: int, *_: int) -> int:
    """utime(path, struct utimbuf {time_t actime, modtime}); NULL: now."""
    if buf:
        atime, mtime = t.abi.read_words(t.mem, buf, 2)
        bits = 8 * t.abi.word
        value: tuple[int | None, int | None] = (
            (s64(atime) if bits == 64 else s32(atime)) * 10**9,
            (s64(mtime) if bits == 64 else s32(mtime)) * 10**9)
    else:
        now = time.time_ns()
        value = (now, now)
    return _change(t, AT_FDCWD, ptr, 0, 0, times=value)


# -- fallocate ----------------------------------------------------------------------------
def do_fallocate(t: Task, fd: int, mode: int, offset: int, length: int) -> int:
    """Mode 0 grows the file to offset+length through the quota (ENOSPC past it), then
    has the host filesystem allocate the range, so st_blocks counts it as on Linux; KEEP_SIZE
    allocates only below the file's size (the quota counts sizes, not blocks: nothing past
    the end may take host disk); PUNCH_HOLE and ZERO_RANGE zero the range (the host punches
    a hole, or zeroes it allocated, where it can)."""
    file = writable_file(t, fd)
    known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
    if mode & ~known or (mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE) \
            or mode & FALLOC_FL_PUNCH_HOLE and mode & FALLOC_FL_ZERO_RANGE:
        return E.NOTSUP
    if offset < 0 or length <= 0:
        return E.INVAL
    if offset + length > (1 << 63) - 1:
        return -errno.EFBIG
    if isinstance(file, DirFile):
        return E.ISDIR
    if not isinstance(file, HostFile):
        return -errno.ESPIPE if not file.seekable else E.NODEV
    if not file.writable:
        return E.BADF
    size = os.fstat(file.fd).st_size
    zeroed = bool(mode & FALLOC_FL_ZERO_RANGE) and _host_fallocate(
        file.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, size, length)
    if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) and not zeroed:
        _zero_range(file.fd, offset, min(offset + length, size))
    if not mode & FALLOC_FL_KEEP_SIZE and offset + length > size:
        file.truncate(offset + length)
        size = offset + length
    if not mode & FALLOC_FL_PUNCH_HOLE:         # allocated, as Linux leaves the range
        _host_fallocate(file.fd, FALLOC_FL_KEEP_SIZE, offset, size, length)
    return 0


def _host_fallocate(fd: int, mode: int, offset: int, size: int, length: int) -> bool:
    """The host's fallocate over [offset, min(offset+length, size)): never past the file's
    end, where the quota would not see it. False where the host filesystem cannot (the
    range then stays as it is)."""
    end = min(offset + length, size)
    if end <= offset:
        return True
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return bool(_libc.fallocate(fd, mode, offset, end - offset) == 0)


def _zero_range(fd: int, start: int, end: int) -> None:
    """Zero [start, end) of a file without changing its size: a hole where the host
    filesystem can punch one, else written zeros."""
    if end <= start:
        return
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start,
                       end - start) == 0:
        return
    chunk = bytes(1 << 20)
    pos = start
    while pos < end:
        pos += os.pwrite(fd, chunk[:min(len(chunk), end - pos)], pos)


def sys_fallocate(t: Task, fd: int, mode: int, offset: int, length: int, *_: int) -> int:
    return do_fallocate(t, fd, s32(mode), s64(offset), s64(length))


def sys_fallocate32(t: Task, fd: int, mode: int, off_lo: int, off_hi: int, len_lo: int,
                    len_hi: int) -> int:
    """i386 fallocate: the offset and length as (low, high) register pairs."""
    return do_fallocate(t, fd, s32(mode), s64((off_hi << 32) | (off_lo & 0xFFFFFFFF)),
                        s64((len_hi << 32) | (len_lo & 0xFFFFFFFF)))
