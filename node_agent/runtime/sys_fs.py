"""File and directory syscalls (architecture-neutral; layouts come from the Abi).

Every path-taking call hands the guest's path (read with a PATH_MAX bound) and its base
directory to one Sandbox method, which resolves and acts in a single step through held
directory descriptors; nothing here resolves a path and acts on it later. chmod, chown and the
utime family change nothing (the sandbox keeps no ownership or times of its own): they only
check that the path exists, through the same walk."""

from __future__ import annotations

import errno
import os
import struct
from typing import TYPE_CHECKING

from .abi import pack_statx
from .files import ConsoleFile, DirFile, OpenFile, StatInfo
from .fs import PATH_MAX, Sandbox
from .memory import GuestFault
from .syscall_common import E, s32, s64

if TYPE_CHECKING:
    from .vcpu import Vcpu

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = 0x100, 0x200, 0x400, 0x1000
O_CREAT, O_TRUNC, O_CLOEXEC = 0o100, 0o1000, 0o2000000
MAX_IO = 16 << 20


def sandbox(cpu: Vcpu) -> Sandbox:
    """The partition's sandbox, bound to its spec's quota and open files on first use."""
    fs = cpu.machine.fs
    if not fs.bound:
        fds = cpu.machine.fds
        with fds.lock:
            files = list(fds.files.values())
        fs.bind(cpu.machine.spec.disk_bytes, files)
    return fs


def read_path(cpu: Vcpu, ptr: int) -> str:
    """A path argument: at most PATH_MAX bytes are read (ENAMETOOLONG past that, EFAULT
    when the string runs into memory the guest does not have)."""
    try:
        raw = cpu.mem.read_cstr(ptr, PATH_MAX)
    except GuestFault:
        cpu.mem.read(ptr, PATH_MAX)             # EFAULT unless all PATH_MAX bytes are there
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)) from None
    return raw.decode("utf-8", "surrogateescape")


def _base_dir(cpu: Vcpu, dirfd: int, path: str) -> str:
    if path.startswith("/") or s32(dirfd) == AT_FDCWD:
        return cpu.machine.cwd
    file = cpu.machine.fds.get(s32(dirfd))
    if not isinstance(file, DirFile):
        raise OSError(errno.ENOTDIR, "not a directory")
    return file.gpath


def path_at(cpu: Vcpu, dirfd: int, ptr: int) -> tuple[str, str]:
    """(path, base directory) of a path argument relative to ``dirfd``."""
    path = read_path(cpu, ptr)
    return path, _base_dir(cpu, dirfd, path)


def resolve_at(cpu: Vcpu, dirfd: int, ptr: int, follow: bool = True) -> str:
    """The normalised guest path a path argument names (for callers that keep a name)."""
    path, base = path_at(cpu, dirfd, ptr)
    return sandbox(cpu).resolve(path, base, follow)


def sys_openat(cpu: Vcpu, dirfd: int, ptr: int, flags: int, mode: int, *_: int) -> int:
    flags &= 0xFFFFFFFF
    path, base = path_at(cpu, dirfd, ptr)
    file = sandbox(cpu).open(path, base, flags, mode)
    try:
        return cpu.machine.fds.add(file, cloexec=bool(flags & O_CLOEXEC))
    except OSError:
        file.close()
        raise


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


def writable_file(cpu: Vcpu, fd: int) -> OpenFile:
    """The open file ``fd`` for a call that may grow it (its quota is attached by then)."""
    sandbox(cpu)
    return cpu.machine.fds.get(s32(fd))


def sys_write(cpu: Vcpu, fd: int, buf: int, count: int, *_: int) -> int:
    file = writable_file(cpu, fd)
    return file.write(cpu.mem.read(buf, min(count, MAX_IO)))


def sys_pread64(cpu: Vcpu, fd: int, buf: int, count: int, off: int, *_: int) -> int:
    data = cpu.machine.fds.get(s32(fd)).pread(min(count, MAX_IO), s64(off))
    cpu.mem.write(buf, data)
    return len(data)


def sys_pwrite64(cpu: Vcpu, fd: int, buf: int, count: int, off: int, *_: int) -> int:
    file = writable_file(cpu, fd)
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
    file = writable_file(cpu, fd)
    parts: list[bytes] = []
    room = MAX_IO                               # one call moves at most MAX_IO bytes
    for base, length in cpu.machine.abi.iovecs(cpu.mem, iov, s32(count)):
        if room <= 0:
            break
        parts.append(cpu.mem.read(base, min(length, room)))
        room -= len(parts[-1])
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


def _empty_path(cpu: Vcpu, ptr: int, flags: int) -> bool:
    return bool(flags & AT_EMPTY_PATH) and cpu.mem.read(ptr, 1) == b"\0"


def _stat_at(cpu: Vcpu, dirfd: int, ptr: int, flags: int) -> StatInfo:
    if _empty_path(cpu, ptr, flags):
        if s32(dirfd) == AT_FDCWD:
            return sandbox(cpu).stat_at(cpu.machine.cwd, "/")
        return cpu.machine.fds.get(s32(dirfd)).stat()
    path, base = path_at(cpu, dirfd, ptr)
    return sandbox(cpu).stat_at(path, base, follow=not flags & AT_SYMLINK_NOFOLLOW)


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
    path, base = path_at(cpu, dirfd, ptr)
    sandbox(cpu).mkdir_at(path, base, mode)
    return 0


def sys_mkdir(cpu: Vcpu, ptr: int, mode: int, *_: int) -> int:
    return sys_mkdirat(cpu, AT_FDCWD, ptr, mode)


def sys_unlinkat(cpu: Vcpu, dirfd: int, ptr: int, flags: int, *_: int) -> int:
    if flags & ~AT_REMOVEDIR:
        return E.INVAL
    path, base = path_at(cpu, dirfd, ptr)
    sandbox(cpu).remove_at(path, base, bool(flags & AT_REMOVEDIR))
    return 0


def sys_unlink(cpu: Vcpu, ptr: int, *_: int) -> int:
    return sys_unlinkat(cpu, AT_FDCWD, ptr, 0)


def sys_rmdir(cpu: Vcpu, ptr: int, *_: int) -> int:
    return sys_unlinkat(cpu, AT_FDCWD, ptr, AT_REMOVEDIR)


def sys_renameat2(cpu: Vcpu, olddir: int, old: int, newdir: int, new: int, flags: int,
                  *_: int) -> int:
    src, src_base = path_at(cpu, olddir, old)
    dst, dst_base = path_at(cpu, newdir, new)
    sandbox(cpu).rename_at(src, src_base, dst, dst_base, flags & 0xFFFFFFFF)
    return 0


def sys_renameat(cpu: Vcpu, olddir: int, old: int, newdir: int, new: int, *_: int) -> int:
    return sys_renameat2(cpu, olddir, old, newdir, new, 0)


def sys_rename(cpu: Vcpu, old: int, new: int, *_: int) -> int:
    return sys_renameat2(cpu, AT_FDCWD, old, AT_FDCWD, new, 0)


def sys_linkat(cpu: Vcpu, olddir: int, old: int, newdir: int, new: int, flags: int,
               *_: int) -> int:
    if flags & ~AT_SYMLINK_FOLLOW:
        return E.INVAL
    src, src_base = path_at(cpu, olddir, old)
    dst, dst_base = path_at(cpu, newdir, new)
    sandbox(cpu).link_at(src, src_base, dst, dst_base, bool(flags & AT_SYMLINK_FOLLOW))
    return 0


def sys_link(cpu: Vcpu, old: int, new: int, *_: int) -> int:
    return sys_linkat(cpu, AT_FDCWD, old, AT_FDCWD, new, 0)


def sys_symlinkat(cpu: Vcpu, target: int, dirfd: int, ptr: int, *_: int) -> int:
    text = read_path(cpu, target)
    path, base = path_at(cpu, dirfd, ptr)
    sandbox(cpu).symlink_at(text, path, base)
    return 0


def sys_symlink(cpu: Vcpu, target: int, ptr: int, *_: int) -> int:
    return sys_symlinkat(cpu, target, AT_FDCWD, ptr)


def sys_readlinkat(cpu: Vcpu, dirfd: int, ptr: int, buf: int, size: int, *_: int) -> int:
    if s32(size) <= 0:
        return E.INVAL
    path, base = path_at(cpu, dirfd, ptr)
    target = sandbox(cpu).readlink_at(path, base)
    raw = target.encode("utf-8", "surrogateescape")[:size]
    cpu.mem.write(buf, raw)
    return len(raw)


def sys_readlink(cpu: Vcpu, ptr: int, buf: int, size: int, *_: int) -> int:
    return sys_readlinkat(cpu, AT_FDCWD, ptr, buf, size)


def sys_faccessat(cpu: Vcpu, dirfd: int, ptr: int, mode: int, *_: int) -> int:
    path, base = path_at(cpu, dirfd, ptr)
    sandbox(cpu).access_at(path, base)
    return 0


def sys_faccessat2(cpu: Vcpu, dirfd: int, ptr: int, mode: int, flags: int, *_: int) -> int:
    if _empty_path(cpu, ptr, flags) and s32(dirfd) != AT_FDCWD:
        cpu.machine.fds.get(s32(dirfd))
        return 0
    path, base = path_at(cpu, dirfd, ptr)
    sandbox(cpu).access_at(path, base, follow=not flags & AT_SYMLINK_NOFOLLOW)
    return 0


def sys_access(cpu: Vcpu, ptr: int, mode: int, *_: int) -> int:
    return sys_faccessat(cpu, AT_FDCWD, ptr, mode)


def sys_getcwd(cpu: Vcpu, buf: int, size: int, *_: int) -> int:
    raw = cpu.machine.cwd.encode("utf-8", "surrogateescape") + b"\0"
    if len(raw) > size:
        return E.RANGE
    cpu.mem.write(buf, raw)
    return len(raw)


def sys_chdir(cpu: Vcpu, ptr: int, *_: int) -> int:
    path, base = path_at(cpu, AT_FDCWD, ptr)
    cpu.machine.cwd = sandbox(cpu).chdir_at(path, base)
    return 0


def sys_fchdir(cpu: Vcpu, fd: int, *_: int) -> int:
    file = cpu.machine.fds.get(s32(fd))
    if not isinstance(file, DirFile):
        return E.NOTDIR
    cpu.machine.cwd = file.gpath
    return 0


def do_ftruncate(cpu: Vcpu, fd: int, length: int) -> int:
    """ftruncate with a signed length (the callers decode the ABI's width)."""
    if length < 0:
        return E.INVAL
    writable_file(cpu, fd).truncate(length)
    return 0


def do_truncate(cpu: Vcpu, ptr: int, length: int) -> int:
    if length < 0:
        return E.INVAL
    path, base = path_at(cpu, AT_FDCWD, ptr)
    sandbox(cpu).truncate(path, base, length)
    return 0


def _long(cpu: Vcpu, value: int) -> int:
    return s64(value) if cpu.is64 else s32(value)


def sys_ftruncate(cpu: Vcpu, fd: int, length: int, *_: int) -> int:
    return do_ftruncate(cpu, fd, _long(cpu, length))


def sys_truncate(cpu: Vcpu, ptr: int, length: int, *_: int) -> int:
    return do_truncate(cpu, ptr, _long(cpu, length))


def sys_exists_ok(cpu: Vcpu, ptr: int, *_: int) -> int:
    """chmod/chown/utime/utimes: succeed when the path exists."""
    path, base = path_at(cpu, AT_FDCWD, ptr)
    sandbox(cpu).access_at(path, base)
    return 0


def sys_lexists_ok(cpu: Vcpu, ptr: int, *_: int) -> int:
    """lchown: succeed when the path exists (a final symlink is not followed)."""
    path, base = path_at(cpu, AT_FDCWD, ptr)
    sandbox(cpu).access_at(path, base, follow=False)
    return 0


def _at_exists(cpu: Vcpu, dirfd: int, ptr: int, flags: int, allowed: int) -> int:
    if flags & ~allowed:
        return E.INVAL
    if _empty_path(cpu, ptr, flags):
        if s32(dirfd) != AT_FDCWD:
            cpu.machine.fds.get(s32(dirfd))
        return 0
    path, base = path_at(cpu, dirfd, ptr)
    sandbox(cpu).access_at(path, base, follow=not flags & AT_SYMLINK_NOFOLLOW)
    return 0


def sys_fchmodat(cpu: Vcpu, dirfd: int, ptr: int, mode: int, *_: int) -> int:
    return _at_exists(cpu, dirfd, ptr, 0, 0)


def sys_fchownat(cpu: Vcpu, dirfd: int, ptr: int, owner: int, group: int, flags: int,
                 *_: int) -> int:
    return _at_exists(cpu, dirfd, ptr, flags, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)


def sys_utimensat(cpu: Vcpu, dirfd: int, ptr: int, times: int, flags: int, *_: int) -> int:
    if ptr == 0:                                # futimens(dirfd)
        cpu.machine.fds.get(s32(dirfd))
        return 0
    return _at_exists(cpu, dirfd, ptr, flags, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)


def sys_futimesat(cpu: Vcpu, dirfd: int, ptr: int, *_: int) -> int:
    return _at_exists(cpu, dirfd, ptr, 0, 0)
