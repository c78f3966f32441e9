"""The i386 syscall table (numbers from arch/x86/entry/syscalls/syscall_32.tbl)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import sys_fd as D
from . import sys_fs as F
from . import sys_proc as P
from .abi import TS64
from .syscall_common import E, Handler, s32, s64

if TYPE_CHECKING:
    from .vcpu import Vcpu

__all__ = ["TABLE"]
TS32 = "<ii"


def _clone(cpu: Vcpu, flags: int, stack: int, ptid: int, tls: int, ctid: int, *_: int) -> int:
    return P.do_clone(cpu, flags, stack, ptid, ctid, tls)


def _mmap2(cpu: Vcpu, addr: int, length: int, prot: int, flags: int, fd: int, pg: int) -> int:
    return P.do_mmap(cpu, addr, length, prot, flags, fd, pg * 4096)


def _old_mmap(cpu: Vcpu, ptr: int, *_: int) -> int:
    addr, length, prot, flags, fd, off = struct.unpack("<6I", cpu.mem.read(ptr, 24))
    return P.do_mmap(cpu, addr, length, prot, flags, fd, off)


def _llseek(cpu: Vcpu, fd: int, hi: int, lo: int, result: int, whence: int, *_: int) -> int:
    pos = cpu.machine.fds.get(s32(fd)).seek(s64((hi << 32) | lo), whence)
    cpu.mem.put_u64(result, pos)
    return 0


def _pread64(cpu: Vcpu, fd: int, buf: int, count: int, lo: int, hi: int, *_: int) -> int:
    return F.sys_pread64(cpu, fd, buf, count, (hi << 32) | lo)


def _pwrite64(cpu: Vcpu, fd: int, buf: int, count: int, lo: int, hi: int, *_: int) -> int:
    return F.sys_pwrite64(cpu, fd, buf, count, (hi << 32) | lo)


def _truncate64(cpu: Vcpu, ptr: int, lo: int, hi: int, *_: int) -> int:
    return F.do_truncate(cpu, ptr, s64((hi << 32) | lo))


def _ftruncate64(cpu: Vcpu, fd: int, lo: int, hi: int, *_: int) -> int:
    return F.do_ftruncate(cpu, fd, s64((hi << 32) | lo))


def _futex(fmt: str) -> Handler:
    def futex(cpu: Vcpu, uaddr: int, op: int, val: int, tmo: int, uaddr2: int, val3: int) -> int:
        return P.do_futex(cpu, uaddr, op, val, tmo, uaddr2, val3, fmt)
    return futex


def _clock_gettime(fmt: str) -> Handler:
    def clock_gettime(cpu: Vcpu, clock: int, ptr: int, *_: int) -> int:
        return P.do_clock_gettime(cpu, clock, ptr, fmt)
    return clock_gettime


def _clock_getres(fmt: str) -> Handler:
    def clock_getres(cpu: Vcpu, clock: int, ptr: int, *_: int) -> int:
        return P.do_clock_getres(cpu, clock, ptr, fmt)
    return clock_getres


def _clock_nanosleep(fmt: str) -> Handler:
    def clock_nanosleep(cpu: Vcpu, clock: int, flags: int, req: int, *_: int) -> int:
        return P.do_clock_nanosleep(cpu, clock, flags, req, fmt)
    return clock_nanosleep


def _nanosleep(cpu: Vcpu, req: int, *_: int) -> int:
    return P.do_nanosleep(cpu, req, TS32)


def _echild(cpu: Vcpu, *_: int) -> int:
    return E.CHILD


TABLE: dict[int, Handler] = {
    1: P.sys_exit, 2: P.enosys, 3: F.sys_read, 4: F.sys_write, 5: F.sys_open, 6: F.sys_close,
    7: _echild, 8: F.sys_creat, 9: F.sys_link, 10: F.sys_unlink, 11: P.enosys, 12: F.sys_chdir,
    13: P.sys_time, 15: F.sys_exists_ok, 19: F.sys_lseek, 20: P.sys_getpid, 33: F.sys_access,
    36: P.zero, 37: P.sys_kill, 38: F.sys_rename, 39: F.sys_mkdir, 40: F.sys_rmdir,
    41: D.sys_dup, 42: D.sys_pipe, 45: P.sys_brk, 54: D.sys_ioctl, 55: D.sys_fcntl,
    57: P.zero, 60: P.sys_umask, 63: D.sys_dup2, 64: P.zero, 65: P.sys_getpid,
    66: P.sys_getpid, 78: P.sys_gettimeofday, 83: F.sys_symlink, 85: F.sys_readlink,
    90: _old_mmap, 91: P.sys_munmap, 92: F.sys_truncate, 93: F.sys_ftruncate, 94: D.sys_fsync,
    116: P.sys_sysinfo, 118: D.sys_fsync, 120: _clone, 122: P.sys_uname, 125: P.sys_mprotect,
    133: F.sys_fchdir, 140: _llseek, 145: F.sys_readv, 146: F.sys_writev, 148: D.sys_fsync,
    158: P.sys_sched_yield, 162: _nanosleep, 163: P.sys_mremap, 168: D.sys_poll, 172: P.sys_prctl,
    174: P.sys_rt_sigaction, 175: P.sys_rt_sigprocmask, 180: _pread64, 181: _pwrite64,
    182: F.sys_exists_ok, 183: F.sys_getcwd, 186: P.zero, 187: D.sys_sendfile, 190: P.enosys,
    191: P.sys_getrlimit, 192: _mmap2, 193: _truncate64, 194: _ftruncate64, 195: F.sys_stat,
    196: F.sys_lstat, 197: F.sys_fstat, 198: F.sys_lexists_ok, 199: P.zero, 200: P.zero,
    201: P.zero, 202: P.zero, 205: P.zero, 207: D.sys_fsync, 212: F.sys_exists_ok,
    213: P.zero, 214: P.zero, 219: P.sys_madvise, 220: F.sys_getdents64, 221: D.sys_fcntl,
    224: P.sys_gettid, 238: P.sys_tkill, 240: _futex(TS32), 242: P.sys_sched_getaffinity,
    243: P.sys_set_thread_area, 252: P.sys_exit_group, 258: P.sys_set_tid_address,
    264: _clock_gettime(TS32), 266: _clock_getres(TS32), 267: _clock_nanosleep(TS32),
    270: P.sys_tgkill, 271: F.sys_exists_ok, 295: F.sys_openat, 296: F.sys_mkdirat,
    298: F.sys_fchownat, 300: F.sys_newfstatat, 301: F.sys_unlinkat, 302: F.sys_renameat,
    303: F.sys_linkat,
    304: F.sys_symlinkat, 305: F.sys_readlinkat, 306: F.sys_fchmodat,
    307: F.sys_faccessat, 309: D.sys_poll, 311: P.zero, 320: F.sys_utimensat,
    330: D.sys_dup3, 331: D.sys_pipe2, 340: P.sys_prlimit64, 353: F.sys_renameat2,
    355: P.sys_getrandom, 383: F.sys_statx, 384: P.sys_arch_prctl, 386: P.enosys,
    403: _clock_gettime(TS64), 406: _clock_getres(TS64), 407: _clock_nanosleep(TS64),
    412: F.sys_utimensat, 422: _futex(TS64), 435: P.enosys, 439: F.sys_faccessat2,
}
