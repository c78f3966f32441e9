"""The x86_64 syscall table (numbers from arch/x86/entry/syscalls/syscall_64.tbl)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..abi import TS64
from . import fds as D
from . import files as F
from . import fsinfo as FI
from . import futex as FX
from . import io as IO
from . import memory as M
from . import polling as PL
from . import processes as P
from . import signals as S
from . import sockets as SK
from . import system as SY
from . import time as T
from .common import E, Handler
from .table import Entry, dispatch, ok, partial, unsupported

if TYPE_CHECKING:
    from ..task import Task

__all__ = ["TABLE", "ENTRIES"]


def _clone(t: Task, flags: int, stack: int, ptid: int, ctid: int, tls: int, *_: int) -> int:
    return P.do_clone(t, flags, stack, ptid, ctid, tls)


def _mmap(t: Task, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
    return M.do_mmap(t, addr, length, prot, flags, fd, off)


def _futex(t: Task, uaddr: int, op: int, val: int, tmo: int, uaddr2: int, val3: int) -> int:
    return FX.do_futex(t, uaddr, op, val, tmo, uaddr2, val3, TS64)


def _clock_gettime(t: Task, clock: int, ptr: int, *_: int) -> int:
    return T.do_clock_gettime(t, clock, ptr, TS64)


def _clock_getres(t: Task, clock: int, ptr: int, *_: int) -> int:
    return T.do_clock_getres(t, clock, ptr, TS64)


def _nanosleep(t: Task, req: int, rem: int, *_: int) -> int:
    return T.do_nanosleep(t, req, TS64, rem)


def _clock_nanosleep(t: Task, clock: int, flags: int, req: int, rem: int, *_: int) -> int:
    return T.do_clock_nanosleep(t, clock, flags, req, TS64, rem)


def _fadvise64(t: Task, fd: int, off: int, length: int, advice: int, *_: int) -> int:
    return FI.do_fadvise(t, fd, advice)


def _echild(t: Task, *_: int) -> int:
    return E.CHILD


ENTRIES: tuple[Entry, ...] = (
    ok(0, "read", IO.sys_read),
    ok(1, "write", IO.sys_write),
    ok(2, "open", F.sys_open),
    ok(3, "close", F.sys_close),
    ok(4, "stat", F.sys_stat),
    ok(5, "fstat", F.sys_fstat),
    ok(6, "lstat", F.sys_lstat),
    ok(7, "poll", PL.sys_poll, "console stdin is always reported readable"),
    ok(8, "lseek", IO.sys_lseek),
    partial(9, "mmap", _mmap, "MAP_SHARED of a read-only fd is served MAP_PRIVATE"),
    ok(10, "mprotect", M.sys_mprotect),
    ok(11, "munmap", M.sys_munmap),
    ok(12, "brk", M.sys_brk),
    ok(13, "rt_sigaction", S.sys_rt_sigaction, "SA_RESTORER required, as on Linux"),
    ok(14, "rt_sigprocmask", S.sys_rt_sigprocmask),
    ok(15, "rt_sigreturn", S.sys_rt_sigreturn, "flags, segments and mask sanitized"),
    partial(16, "ioctl", D.sys_ioctl, "FIONBIO, FIONREAD, FIOCLEX, FIONCLEX; else ENOTTY"),
    ok(17, "pread64", IO.sys_pread64),
    ok(18, "pwrite64", IO.sys_pwrite64),
    ok(19, "readv", IO.sys_readv),
    ok(20, "writev", IO.sys_writev),
    ok(21, "access", F.sys_access),
    ok(22, "pipe", D.sys_pipe, "64 KiB; blocks; writes up to PIPE_BUF are atomic"),
    ok(23, "select", PL.sys_select),
    ok(24, "sched_yield", SY.sys_sched_yield),
    ok(25, "mremap", M.sys_mremap),
    ok(26, "msync", M.sys_msync),
    partial(28, "madvise", M.sys_madvise, "MADV_DONTNEED only; other advice is accepted"),
    ok(32, "dup", D.sys_dup),
    ok(33, "dup2", D.sys_dup2),
    ok(34, "pause", S.sys_pause),
    ok(35, "nanosleep", _nanosleep),
    partial(36, "getitimer", S.sys_getitimer, "VIRTUAL/PROF count wall-clock time"),
    ok(37, "alarm", S.sys_alarm),
    partial(38, "setitimer", S.sys_setitimer, "VIRTUAL/PROF count wall-clock time"),
    ok(39, "getpid", P.sys_getpid),
    ok(40, "sendfile", D.sys_sendfile),
    partial(41, "socket", SK.sys_socket, "AF_UNIX in the partition; else EAFNOSUPPORT"),
    ok(42, "connect", SK.sys_connect),
    ok(43, "accept", SK.sys_accept),
    ok(44, "sendto", SK.sys_sendto),
    ok(45, "recvfrom", SK.sys_recvfrom),
    partial(46, "sendmsg", SK.sys_sendmsg, "SCM_RIGHTS; SCM_CREDENTIALS ignored; AF_UNIX only"),
    partial(47, "recvmsg", SK.sys_recvmsg, "SCM_RIGHTS; MSG_CTRUNC, MSG_CMSG_CLOEXEC"),
    ok(48, "shutdown", SK.sys_shutdown),
    ok(49, "bind", SK.sys_bind),
    ok(50, "listen", SK.sys_listen),
    ok(51, "getsockname", SK.sys_getsockname),
    ok(52, "getpeername", SK.sys_getpeername),
    partial(53, "socketpair", SK.sys_socketpair, "AF_UNIX in the partition; else EAFNOSUPPORT"),
    partial(54, "setsockopt", SK.sys_setsockopt, "accepted, nothing changes"),
    partial(55, "getsockopt", SK.sys_getsockopt, "SOL_SOCKET TYPE, ERROR, PEERCRED, ..."),
    partial(56, "clone", _clone, "no namespaces, ptrace or shared handlers across processes"),
    partial(57, "fork", P.sys_fork, "copies the pages written so far at once"),
    ok(58, "vfork", P.sys_vfork),
    partial(59, "execve", P.sys_execve, "the partition's architecture only"),
    ok(60, "exit", P.sys_exit),
    ok(61, "wait4", P.sys_wait4, "rusage: the child's and its reaped children's CPU time"),
    ok(62, "kill", S.sys_kill, "pid, 0, -1 and -pgid; SI_USER with the sender's pid"),
    ok(63, "uname", SY.sys_uname),
    partial(72, "fcntl", D.sys_fcntl, "record locks always granted; pipes stay 64 KiB"),
    ok(74, "fsync", D.sys_fsync),
    ok(75, "fdatasync", D.sys_fsync),
    ok(76, "truncate", F.sys_truncate),
    ok(77, "ftruncate", F.sys_ftruncate),
    ok(79, "getcwd", F.sys_getcwd),
    ok(80, "chdir", F.sys_chdir),
    ok(81, "fchdir", F.sys_fchdir),
    ok(82, "rename", F.sys_rename),
    ok(83, "mkdir", F.sys_mkdir),
    ok(84, "rmdir", F.sys_rmdir),
    ok(85, "creat", F.sys_creat),
    ok(86, "link", F.sys_link),
    ok(87, "unlink", F.sys_unlink),
    ok(88, "symlink", F.sys_symlink),
    ok(89, "readlink", F.sys_readlink),
    ok(90, "chmod", F.sys_chmod, "kept in the sandbox's table; the host file gets no special bits"),
    partial(91, "fchmod", F.sys_fchmod, "EPERM once the path no longer names the file"),
    ok(92, "chown", F.sys_chown, "kept in the sandbox's table; the host owner never changes"),
    partial(93, "fchown", F.sys_fchown, "EPERM once the path no longer names the file"),
    ok(94, "lchown", F.sys_lchown, "kept in the sandbox's table"),
    ok(95, "umask", SY.sys_umask, "applied to open(O_CREAT), creat and mkdir"),
    ok(96, "gettimeofday", T.sys_gettimeofday),
    partial(97, "getrlimit", SY.sys_getrlimit, "fixed limits; setting them is ignored"),
    ok(98, "getrusage", SY.sys_getrusage,
       "per-process CPU time (docs/processes.md); ru_utime, ru_stime, ru_maxrss only"),
    ok(99, "sysinfo", SY.sys_sysinfo, "the partition's memory, uptime, load, processes"),
    ok(100, "times", SY.sys_times, "per-process CPU time (docs/processes.md)"),
    ok(102, "getuid", P.zero, "the guest runs as uid 0"),
    ok(104, "getgid", P.zero, "the guest runs as gid 0"),
    partial(105, "setuid", P.zero, "accepted; the identity stays 0"),
    partial(106, "setgid", P.zero, "accepted; the identity stays 0"),
    ok(107, "geteuid", P.zero, "the guest runs as uid 0"),
    ok(108, "getegid", P.zero, "the guest runs as gid 0"),
    ok(109, "setpgid", P.sys_setpgid),
    ok(110, "getppid", P.sys_getppid),
    ok(111, "getpgrp", P.sys_getpgrp),
    ok(112, "setsid", P.sys_setsid),
    ok(115, "getgroups", P.zero, "no supplementary groups"),
    ok(118, "getresuid", SY.sys_getresuid, "all 0"),
    ok(120, "getresgid", SY.sys_getresuid, "all 0"),
    ok(121, "getpgid", P.sys_getpgid),
    ok(124, "getsid", P.sys_getsid),
    ok(127, "rt_sigpending", S.sys_rt_sigpending),
    ok(128, "rt_sigtimedwait", S.rt_sigtimedwait(TS64)),
    ok(129, "rt_sigqueueinfo", S.sys_rt_sigqueueinfo),
    ok(130, "rt_sigsuspend", S.sys_rt_sigsuspend),
    ok(131, "sigaltstack", S.sys_sigaltstack, "SS_AUTODISARM too"),
    ok(132, "utime", F.sys_utime),
    partial(133, "mknod", D.sys_mknod, "FIFOs and socket nodes; devices EPERM"),
    partial(135, "personality", SY.sys_personality, "kept per process; flags change nothing"),
    partial(137, "statfs", FI.sys_statfs, "the overlay, sized by the disk quota"),
    partial(138, "fstatfs", FI.sys_fstatfs, "the overlay, sized by the disk quota"),
    ok(140, "getpriority", SY.sys_getpriority),
    partial(141, "setpriority", SY.sys_setpriority, "stored; scheduling ignores it"),
    partial(157, "prctl", SY.sys_prctl, "PR_SET_NAME/PR_GET_NAME only"),
    ok(158, "arch_prctl", P.sys_arch_prctl),
    ok(162, "sync", P.zero, "nothing to flush: writes reach the host file at once"),
    ok(186, "gettid", P.sys_gettid, "the main thread is 1"),
    partial(191, "getxattr", FI.sys_getxattr, "no extended attributes are kept: ENODATA"),
    partial(192, "lgetxattr", FI.sys_lgetxattr, "no extended attributes are kept: ENODATA"),
    partial(193, "fgetxattr", FI.sys_fgetxattr, "no extended attributes are kept: ENODATA"),
    partial(194, "listxattr", FI.sys_listxattr, "no extended attributes are kept: empty list"),
    partial(195, "llistxattr", FI.sys_llistxattr, "no extended attributes are kept: empty list"),
    partial(196, "flistxattr", FI.sys_flistxattr, "no extended attributes are kept: empty list"),
    ok(200, "tkill", S.sys_tkill),
    ok(201, "time", T.sys_time),
    ok(202, "futex", _futex),
    ok(204, "sched_getaffinity", SY.sys_sched_getaffinity),
    ok(213, "epoll_create", PL.sys_epoll_create),
    ok(217, "getdents64", F.sys_getdents64),
    ok(218, "set_tid_address", P.sys_set_tid_address),
    ok(221, "fadvise64", _fadvise64, "advice only: checked, then ignored"),
    partial(222, "timer_create", S.sys_timer_create, "CPU-time clocks count wall-clock time"),
    ok(223, "timer_settime", S.timer_settime(TS64)),
    ok(224, "timer_gettime", S.timer_gettime(TS64)),
    ok(225, "timer_getoverrun", S.sys_timer_getoverrun),
    ok(226, "timer_delete", S.sys_timer_delete),
    ok(228, "clock_gettime", _clock_gettime),
    ok(229, "clock_getres", _clock_getres),
    ok(230, "clock_nanosleep", _clock_nanosleep),
    ok(231, "exit_group", P.sys_exit_group),
    ok(232, "epoll_wait", PL.sys_epoll_wait),
    partial(233, "epoll_ctl", PL.sys_epoll_ctl, "EPOLLET: again after any change"),
    ok(234, "tgkill", S.sys_tgkill),
    ok(235, "utimes", F.sys_utimes),
    ok(247, "waitid", P.sys_waitid,
       "rusage: the child's and its reaped children's CPU time; no P_PIDFD"),
    partial(251, "ioprio_set", SY.sys_ioprio_set, "stored; I/O ignores it"),
    ok(252, "ioprio_get", SY.sys_ioprio_get),
    ok(257, "openat", F.sys_openat),
    ok(258, "mkdirat", F.sys_mkdirat),
    partial(259, "mknodat", D.sys_mknodat, "FIFOs and socket nodes; devices EPERM"),
    ok(260, "fchownat", F.sys_fchownat, "kept in the sandbox's table"),
    ok(261, "futimesat", F.sys_futimesat),
    ok(262, "newfstatat", F.sys_newfstatat),
    ok(263, "unlinkat", F.sys_unlinkat),
    ok(264, "renameat", F.sys_renameat),
    ok(265, "linkat", F.sys_linkat, "AT_EMPTY_PATH while the path still names the file"),
    ok(266, "symlinkat", F.sys_symlinkat),
    ok(267, "readlinkat", F.sys_readlinkat),
    ok(268, "fchmodat", F.sys_fchmodat, "kept in the sandbox's table"),
    ok(269, "faccessat", F.sys_faccessat),
    ok(270, "pselect6", PL.sys_pselect6),
    ok(271, "ppoll", PL.sys_ppoll),
    partial(273, "set_robust_list", P.zero, "accepted; robust futexes not released"),
    unsupported(274, "get_robust_list", "rarely used; glibc does not need it"),
    ok(280, "utimensat", F.sys_utimensat),
    ok(281, "epoll_pwait", PL.sys_epoll_pwait),
    ok(284, "eventfd", D.sys_eventfd),
    partial(285, "fallocate", F.sys_fallocate, "no blocks past EOF; no COLLAPSE/INSERT"),
    ok(288, "accept4", SK.sys_accept4),
    ok(290, "eventfd2", D.sys_eventfd2),
    ok(291, "epoll_create1", PL.sys_epoll_create1),
    ok(292, "dup3", D.sys_dup3),
    ok(293, "pipe2", D.sys_pipe2, "O_NONBLOCK, O_CLOEXEC; O_DIRECT accepted"),
    partial(302, "prlimit64", SY.sys_prlimit64, "fixed limits; setting them is ignored"),
    partial(316, "renameat2", F.sys_renameat2, "RENAME_WHITEOUT: EINVAL"),
    ok(318, "getrandom", SY.sys_getrandom),
    ok(322, "execveat", P.sys_execveat),
    ok(332, "statx", F.sys_statx),
    unsupported(334, "rseq", "glibc falls back without restartable sequences"),
    unsupported(435, "clone3", "glibc falls back to clone"),
    ok(439, "faccessat2", F.sys_faccessat2),
    ok(441, "epoll_pwait2", PL.sys_epoll_pwait2),
)

TABLE: dict[int, Handler] = dispatch(ENTRIES)
