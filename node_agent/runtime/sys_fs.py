"""File and directory syscalls (architecture-neutral; layouts come from the Abi)."""

from __future__ import annotations

import os
import stat
import struct
from typing import TYPE_CHECKING

from .abi import pack_statx
from .files import (
    ConsoleFile,
    DeviceFile,
    DirFile,
    HostFile,
    OpenFile,
    StatInfo,
)
from .fs import VIRTUAL_DEVICES, VIRTUAL_DIRS
from .syscall_common import E, s32, s64

if TYPE_CHECKING:
    from .vcpu import Vcpu

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_EMPTY_PATH = 0x100, 0x200, 0x1000
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC = 0o200000, 0o400000, 0o2000000
O_ACCMODE = 3
MAX_IO = 16 << 20


def _path(cpu: Vcpu, ptr: int) -> str:
    return cpu.mem.read_cstr(ptr, 4096).decode("utf-8", "surrogateescape")


def _base_dir(cpu: Vcpu, dirfd: int, path: str) -> str:
    if path.startswith("/") or s32(dirfd) == AT_FDCWD:
        return cpu.machine.cwd
    file = cpu.machine.fds.get(s32(dirfd))
    if not isinstance(file, DirFile):
        raise OSError(20, "not a directory")
    return file.gpath


def resolve_at(cpu: Vcpu, dirfd: int, ptr: int, follow: bool = True) -> str:
    path = _path(cpu, ptr)
    return cpu.machine.fs.resolve(path, _base_dir(cpu, dirfd, path), follow)


def stat_path(cpu: Vcpu, gpath: str) -> StatInfo:
    fs = cpu.machine.fs
    if gpath in VIRTUAL_DEVICES:
        major, minor = VIRTUAL_DEVICES[gpath]
        return StatInfo.synthetic(stat.S_IFCHR | 0o666, rdev=(major << 8) | minor)
    if gpath in VIRTUAL_DIRS:
        return StatInfo.synthetic(stat.S_IFDIR | 0o555, ino=2)
    if gpath == "/proc/self/exe":
        return StatInfo.synthetic(stat.S_IFLNK | 0o777, ino=3)
    with fs.lock:
        return StatInfo.from_host(fs.lstat(gpath))


def open_gpath(cpu: Vcpu, gpath: str, flags: int, mode: int) -> OpenFile:
    fs = cpu.machine.fs
    if gpath in VIRTUAL_DEVICES:
        return DeviceFile(flags, gpath, VIRTUAL_DEVICES[gpath])
    with fs.lock:
        is_dir = fs.is_dir(gpath)
        if is_dir or gpath in VIRTUAL_DIRS:
            if flags & O_ACCMODE:
                raise OSError(21, "is a directory")
            return DirFile(flags, gpath, fs.listdir(gpath), stat_path(cpu, gpath))
        if flags & O_DIRECTORY:
            raise OSError(20 if fs.exists(gpath) else 2, "not a directory")
        found = fs.host_path(gpath)
        if found is None:
            if not flags & O_CREAT:
                raise OSError(2, "no such file", gpath)
            host = fs.prepare_create(gpath)
            hflags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW
            fd = os.open(host, hflags, (mode & 0o7777) | 0o600)
            os.close(fd)
        elif flags & O_CREAT and flags & O_EXCL:
            raise OSError(17, "file exists", gpath)
        host_flags = (flags & (O_ACCMODE | O_TRUNC | O_APPEND)) | os.O_NOFOLLOW
        if flags & (O_ACCMODE | O_TRUNC):
            host = fs.copy_up(gpath)
        else:
            host = fs.host_path(gpath)[0]  # type: ignore[index]
        return HostFile(os.open(host, host_flags), flags, gpath)


def sys_openat(cpu: Vcpu, dirfd: int, ptr: int, flags: int, mode: int, *_: int) -> int:
    flags &= 0xFFFFFFFF
    follow = not (flags & O_NOFOLLOW) and not (flags & O_CREAT and flags & O_EXCL)
    gpath = resolve_at(cpu, dirfd, ptr, follow)
    file = open_gpath(cpu, gpath, flags, mode)
    return cpu.machine.fds.add(file, cloexec=bool(flags & O_CLOEXEC))


def sys_open(cpu: Vcpu, ptr: int, flags: int, mode: int, *_: int) -> int:
    return sys_openat(cpu, AT_FDCWD, ptr, flags, mode)


def sys_creat(cpu: Vcpu, ptr: int, mode: int, *_: int) -> int:
    return sys_openat(cpu, AT_FDCWD, ptr, O_CREAT | O_TRUNC | 1, mode)


def sys_close(cpu: Vcpu, fd: int, *_: int) -> int:
    cpu.machine.fds.close(s32(fd))
    return 0


def sys_read(cpu: Vcpu, fd: int, buf: int, count: int, *_: int) -> int:
    file = cpu.machine.fds.get(s32(fd))
    if isinstance(file, ConsoleFile) and count:
        assert cpu.thread is not None
        cpu.mem.write(buf, b"")                 # EFAULT now rather than later
        cpu.mem.read(buf, min(count, 1 << 16))
        return cpu.machine.read_stdin(cpu.thread, buf, count)
    data = file.read(min(count, MAX_IO))
    cpu.mem.write(buf, data)
    return len(data)


def sys_write(cpu: Vcpu, fd: int, buf: int, count: int, *_: int) -> int:
    file = cpu.machine.fds.get(s32(fd))
    return file.write(cpu.mem.read(buf, min(count, MAX_IO)))


def sys_pread64(cpu: Vcpu, fd: int, buf: int, count: int, off: int, *_: int) -> int:
    data = cpu.machine.fds.get(s32(fd)).pread(min(count, MAX_IO), s64(off))
    cpu.mem.write(buf, data)
    return len(data)


def sys_pwrite64(cpu: Vcpu, fd: int, buf: int, count: int, off: int, *_: int) -> int:
    file = cpu.machine.fds.get(s32(fd))
    return file.pwrite(cpu.mem.read(buf, min(count, MAX_IO)), s64(off))


def sys_readv(cpu: Vcpu, fd: int, iov: int, count: int, *_: int) -> int:
    file = cpu.machine.fds.get(s32(fd))
    total = 0
    for base, length in cpu.machine.abi.iovecs(cpu.mem, iov, s32(count)):
        data = file.read(min(length, MAX_IO))
        cpu.mem.write(base, data)
        total += len(data)
        if len(data) < length:
            break
    return total


def sys_writev(cpu: Vcpu, fd: int, iov: int, count: int, *_: int) -> int:
    file = cpu.machine.fds.get(s32(fd))
    parts = [cpu.mem.read(b, min(n, MAX_IO)) for b, n in
             cpu.machine.abi.iovecs(cpu.mem, iov, s32(count))]
    return file.write(b"".join(parts))


def sys_lseek(cpu: Vcpu, fd: int, off: int, whence: int, *_: int) -> int:
    bits = 64 if cpu.is64 else 32
    offset = s64(off) if bits == 64 else s32(off)
    return cpu.machine.fds.get(s32(fd)).seek(offset, whence)


def _put_stat(cpu: Vcpu, buf: int, info: StatInfo) -> int:
    cpu.mem.write(buf, cpu.machine.abi.pack_stat(info))
    return 0


def sys_fstat(cpu: Vcpu, fd: int, buf: int, *_: int) -> int:
    return _put_stat(cpu, buf, cpu.machine.fds.get(s32(fd)).stat())


def _stat_at(cpu: Vcpu, dirfd: int, ptr: int, flags: int) -> StatInfo:
    if flags & AT_EMPTY_PATH and cpu.mem.read(ptr, 1) == b"\0":
        if s32(dirfd) == AT_FDCWD:
            return stat_path(cpu, cpu.machine.cwd)
        return cpu.machine.fds.get(s32(dirfd)).stat()
    gpath = resolve_at(cpu, dirfd, ptr, follow=not flags & AT_SYMLINK_NOFOLLOW)
    return stat_path(cpu, gpath)


def sys_newfstatat(cpu: Vcpu, dirfd: int, ptr: int, buf: int, flags: int, *_: int) -> int:
    return _put_stat(cpu, buf, _stat_at(cpu, dirfd, ptr, flags))


def sys_stat(cpu: Vcpu, ptr: int, buf: int, *_: int) -> int:
    return _put_stat(cpu, buf, _stat_at(cpu, AT_FDCWD, ptr, 0))


def sys_lstat(cpu: Vcpu, ptr: int, buf: int, *_: int) -> int:
    return _put_stat(cpu, buf, _stat_at(cpu, AT_FDCWD, ptr, AT_SYMLINK_NOFOLLOW))


def sys_statx(cpu: Vcpu, dirfd: int, ptr: int, flags: int, mask: int, buf: int, *_: int) -> int:
    cpu.mem.write(buf, pack_statx(_stat_at(cpu, dirfd, ptr, flags)))
    return 0


def sys_getdents64(cpu: Vcpu, fd: int, buf: int, count: int, *_: int) -> int:
    file = cpu.machine.fds.get(s32(fd))
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
    cpu.mem.write(buf, bytes(out))
    return len(out)


def sys_mkdirat(cpu: Vcpu, dirfd: int, ptr: int, mode: int, *_: int) -> int:
    cpu.machine.fs.mkdir(resolve_at(cpu, dirfd, ptr, follow=False), mode)
    return 0


def sys_mkdir(cpu: Vcpu, ptr: int, mode: int, *_: int) -> int:
    return sys_mkdirat(cpu, AT_FDCWD, ptr, mode)


def sys_unlinkat(cpu: Vcpu, dirfd: int, ptr: int, flags: int, *_: int) -> int:
    gpath = resolve_at(cpu, dirfd, ptr, follow=False)
    cpu.machine.fs.remove(gpath, bool(flags & AT_REMOVEDIR))
    return 0


def sys_unlink(cpu: Vcpu, ptr: int, *_: int) -> int:
    return sys_unlinkat(cpu, AT_FDCWD, ptr, 0)


def sys_rmdir(cpu: Vcpu, ptr: int, *_: int) -> int:
    return sys_unlinkat(cpu, AT_FDCWD, ptr, AT_REMOVEDIR)


def sys_renameat(cpu: Vcpu, olddir: int, old: int, newdir: int, new: int, *_: int) -> int:
    src = resolve_at(cpu, olddir, old, follow=False)
    dst = resolve_at(cpu, newdir, new, follow=False)
    cpu.machine.fs.rename(src, dst)
    return 0


def sys_rename(cpu: Vcpu, old: int, new: int, *_: int) -> int:
    return sys_renameat(cpu, AT_FDCWD, old, AT_FDCWD, new)


def sys_symlinkat(cpu: Vcpu, target: int, dirfd: int, ptr: int, *_: int) -> int:
    cpu.machine.fs.symlink(_path(cpu, target), resolve_at(cpu, dirfd, ptr, follow=False))
    return 0


def sys_symlink(cpu: Vcpu, target: int, ptr: int, *_: int) -> int:
    return sys_symlinkat(cpu, target, AT_FDCWD, ptr)


def sys_readlinkat(cpu: Vcpu, dirfd: int, ptr: int, buf: int, size: int, *_: int) -> int:
    gpath = resolve_at(cpu, dirfd, ptr, follow=False)
    with cpu.machine.fs.lock:
        target = cpu.machine.fs.readlink(gpath)
        if target is None:
            return E.INVAL if cpu.machine.fs.exists(gpath) else E.NOENT
    raw = target.encode("utf-8", "surrogateescape")[:size]
    cpu.mem.write(buf, raw)
    return len(raw)


def sys_readlink(cpu: Vcpu, ptr: int, buf: int, size: int, *_: int) -> int:
    return sys_readlinkat(cpu, AT_FDCWD, ptr, buf, size)


def sys_faccessat(cpu: Vcpu, dirfd: int, ptr: int, mode: int, *_: int) -> int:
    gpath = resolve_at(cpu, dirfd, ptr)
    return 0 if cpu.machine.fs.exists(gpath) else E.NOENT


def sys_access(cpu: Vcpu, ptr: int, mode: int, *_: int) -> int:
    return sys_faccessat(cpu, AT_FDCWD, ptr, mode)


def sys_getcwd(cpu: Vcpu, buf: int, size: int, *_: int) -> int:
    raw = cpu.machine.cwd.encode("utf-8", "surrogateescape") + b"\0"
    if len(raw) > size:
        return E.RANGE
    cpu.mem.write(buf, raw)
    return len(raw)


def sys_chdir(cpu: Vcpu, ptr: int, *_: int) -> int:
    gpath = resolve_at(cpu, AT_FDCWD, ptr)
    if not cpu.machine.fs.is_dir(gpath):
        return E.NOTDIR if cpu.machine.fs.exists(gpath) else E.NOENT
    cpu.machine.cwd = gpath
    return 0


def sys_fchdir(cpu: Vcpu, fd: int, *_: int) -> int:
    file = cpu.machine.fds.get(s32(fd))
    if not isinstance(file, DirFile):
        return E.NOTDIR
    cpu.machine.cwd = file.gpath
    return 0


def sys_ftruncate(cpu: Vcpu, fd: int, length: int, *_: int) -> int:
    cpu.machine.fds.get(s32(fd)).truncate(length)
    return 0


def sys_truncate(cpu: Vcpu, ptr: int, length: int, *_: int) -> int:
    gpath = resolve_at(cpu, AT_FDCWD, ptr)
    with cpu.machine.fs.lock:
        os.truncate(cpu.machine.fs.copy_up(gpath), length)
    return 0


def sys_exists_ok(cpu: Vcpu, ptr: int, *_: int) -> int:
    """chmod/chown/utimes-style calls: succeed when the path exists (no host metadata)."""
    return 0 if cpu.machine.fs.exists(resolve_at(cpu, AT_FDCWD, ptr)) else E.NOENT


def sys_at_exists_ok(cpu: Vcpu, dirfd: int, ptr: int, *_: int) -> int:
    if ptr == 0:
        return 0
    return 0 if cpu.machine.fs.exists(resolve_at(cpu, dirfd, ptr)) else E.NOENT
