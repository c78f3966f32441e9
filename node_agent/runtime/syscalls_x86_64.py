"""The x86_64 syscall table (numbers from arch/x86/entry/syscalls/syscall_64.tbl)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import sys_fd as D
from . import sys_fs as F
from . import sys_proc as P
from .abi import TS64
from .syscall_common import E, Handler

if TYPE_CHECKING:
    from .vcpu import Vcpu

__all__ = ["TABLE"]


def _clone(cpu: Vcpu, flags: int, stack: int, ptid: int, ctid: int, tls: int, *_: int) -> int:
    return P.do_clone(cpu, flags, stack, ptid, ctid, tls)


def _mmap(cpu: Vcpu, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
    return P.do_mmap(cpu, addr, length, prot, flags, fd, off)


def _futex(cpu: Vcpu, uaddr: int, op: int, val: int, tmo: int, uaddr2: int, val3: int) -> int:
    return P.do_futex(cpu, uaddr, op, val, tmo, uaddr2, val3, TS64)


def _clock_gettime(cpu: Vcpu, clock: int, ptr: int, *_: int) -> int:
    return P.do_clock_gettime(cpu, clock, ptr, TS64)


def _clock_getres(cpu: Vcpu, clock: int, ptr: int, *_: int) -> int:
    return P.do_clock_getres(cpu, clock, ptr, TS64)


def _nanosleep(cpu: Vcpu, req: int, *_: int) -> int:
    return P.do_nanosleep(cpu, req, TS64)


def _clock_nanosleep(cpu: Vcpu, clock: int, flags: int, req: int, *_: int) -> int:
    return P.do_clock_nanosleep(cpu, clock, flags, req, TS64)


def _echild(cpu: Vcpu, *_: int) -> int:
    return E.CHILD


TABLE: dict[int, Handler] = {
    0: F.sys_read, 1: F.sys_write, 2: F.sys_open, 3: F.sys_close, 4: F.sys_stat,
    5: F.sys_fstat, 6: F.sys_lstat, 7: D.sys_poll, 8: F.sys_lseek, 9: _mmap,
    10: P.sys_mprotect, 11: P.sys_munmap, 12: P.sys_brk, 13: P.sys_rt_sigaction,
    14: P.sys_rt_sigprocmask, 16: D.sys_ioctl, 17: F.sys_pread64, 18: F.sys_pwrite64,
    19: F.sys_readv, 20: F.sys_writev, 21: F.sys_access, 22: D.sys_pipe, 24: P.sys_sched_yield,
    25: P.sys_mremap, 28: P.sys_madvise, 32: D.sys_dup, 33: D.sys_dup2, 35: _nanosleep,
    39: P.sys_getpid, 40: D.sys_sendfile, 56: _clone, 57: P.enosys, 58: P.enosys,
    59: P.enosys, 60: P.sys_exit, 61: _echild, 62: P.sys_kill, 63: P.sys_uname,
    72: D.sys_fcntl, 74: D.sys_fsync, 75: D.sys_fsync, 76: F.sys_truncate,
    77: F.sys_ftruncate, 79: F.sys_getcwd, 80: F.sys_chdir, 81: F.sys_fchdir,
    82: F.sys_rename, 83: F.sys_mkdir, 84: F.sys_rmdir, 85: F.sys_creat,
    86: F.sys_link, 87: F.sys_unlink, 88: F.sys_symlink,
    89: F.sys_readlink, 90: F.sys_exists_ok, 91: D.sys_fsync, 92: F.sys_exists_ok,
    93: D.sys_fsync, 94: F.sys_lexists_ok, 95: P.sys_umask, 96: P.sys_gettimeofday,
    97: P.sys_getrlimit, 99: P.sys_sysinfo, 102: P.zero, 104: P.zero, 105: P.zero,
    106: P.zero, 107: P.zero, 108: P.zero, 109: P.zero, 110: P.zero, 111: P.sys_getpid,
    112: P.sys_getpid, 115: P.zero, 121: P.sys_getpid, 124: P.sys_getpid, 131: P.zero,
    132: F.sys_exists_ok, 157: P.sys_prctl, 158: P.sys_arch_prctl, 162: P.zero, 186: P.sys_gettid,
    200: P.sys_tkill, 201: P.sys_time, 202: _futex, 204: P.sys_sched_getaffinity,
    217: F.sys_getdents64, 218: P.sys_set_tid_address, 228: _clock_gettime,
    229: _clock_getres, 230: _clock_nanosleep, 231: P.sys_exit_group, 234: P.sys_tgkill,
    235: F.sys_exists_ok, 257: F.sys_openat, 258: F.sys_mkdirat, 260: F.sys_fchownat,
    262: F.sys_newfstatat, 263: F.sys_unlinkat, 264: F.sys_renameat, 265: F.sys_linkat,
    266: F.sys_symlinkat,
    267: F.sys_readlinkat, 268: F.sys_fchmodat, 269: F.sys_faccessat, 271: D.sys_poll,
    273: P.zero, 274: P.enosys, 280: F.sys_utimensat, 292: D.sys_dup3, 293: D.sys_pipe2,
    302: P.sys_prlimit64, 316: F.sys_renameat2, 318: P.sys_getrandom, 332: F.sys_statx,
    334: P.enosys, 435: P.enosys, 439: F.sys_faccessat2,
}
