"""The i386 syscall table (numbers from arch/x86/entry/syscalls/syscall_32.tbl)."""

from __future__ import annotations

import struct
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
from .common import E, Handler, s32, s64
from .table import Entry, dispatch, ok, partial, unsupported

if TYPE_CHECKING:
    from ..task import Task

__all__ = ["TABLE", "ENTRIES"]
TS32 = "<ii"


def _clone(t: Task, flags: int, stack: int, ptid: int, tls: int, ctid: int, *_: int) -> int:
    return P.do_clone(t, flags, stack, ptid, ctid, tls)


def _mmap2(t: Task, addr: int, length: int, prot: int, flags: int, fd: int, pg: int) -> int:
    return M.do_mmap(t, addr, length, prot, flags, fd, pg * 4096)


def _old_mmap(t: Task, ptr: int, *_: int) -> int:
    addr, length, prot, flags, fd, off = struct.unpack("<6I", t.mem.read(ptr, 24))
    return M.do_mmap(t, addr, length, prot, flags, fd, off)


def _llseek(t: Task, fd: int, hi: int, lo: int, result: int, whence: int, *_: int) -> int:
    pos = t.fds.get(s32(fd)).seek(s64((hi << 32) | lo), whence)
    t.mem.put_u64(result, pos)
    return 0


def _pread64(t: Task, fd: int, buf: int, count: int, lo: int, hi: int, *_: int) -> int:
    return IO.sys_pread64(t, fd, buf, count, (hi << 32) | lo)


def _pwrite64(t: Task, fd: int, buf: int, count: int, lo: int, hi: int, *_: int) -> int:
    return IO.sys_pwrite64(t, fd, buf, count, (hi << 32) | lo)


def _truncate64(t: Task, ptr: int, lo: int, hi: int, *_: int) -> int:
    return F.do_truncate(t, ptr, s64((hi << 32) | lo))


def _ftruncate64(t: Task, fd: int, lo: int, hi: int, *_: int) -> int:
    return F.do_ftruncate(t, fd, s64((hi << 32) | lo))


def _futex(fmt: str) -> Handler:
    def futex(t: Task, uaddr: int, op: int, val: int, tmo: int, uaddr2: int, val3: int) -> int:
        return FX.do_futex(t, uaddr, op, val, tmo, uaddr2, val3, fmt)
    return futex


def _clock_gettime(fmt: str) -> Handler:
    def clock_gettime(t: Task, clock: int, ptr: int, *_: int) -> int:
        return T.do_clock_gettime(t, clock, ptr, fmt)
    return clock_gettime


def _clock_getres(fmt: str) -> Handler:
    def clock_getres(t: Task, clock: int, ptr: int, *_: int) -> int:
        return T.do_clock_getres(t, clock, ptr, fmt)
    return clock_getres


def _clock_nanosleep(fmt: str) -> Handler:
    def clock_nanosleep(t: Task, clock: int, flags: int, req: int, rem: int, *_: int) -> int:
        return T.do_clock_nanosleep(t, clock, flags, req, fmt, rem)
    return clock_nanosleep


def _nanosleep(t: Task, req: int, rem: int, *_: int) -> int:
    return T.do_nanosleep(t, req, TS32, rem)


def _fadvise64(t: Task, fd: int, lo: int, hi: int, length: int, advice: int, *_: int) -> int:
    return FI.do_fadvise(t, fd, advice)


def _fadvise64_64(t: Task, fd: int, lo: int, hi: int, len_lo: int, len_hi: int,
                  advice: int) -> int:
    return FI.do_fadvise(t, fd, advice)


def _echild(t: Task, *_: int) -> int:
    return E.CHILD


ENTRIES: tuple[Entry, ...] = (
    ok(1, "exit", P.sys_exit),
    partial(2, "fork", P.sys_fork, "copies the pages written so far at once"),
    ok(3, "read", IO.sys_read),
    ok(4, "write", IO.sys_write),
    ok(5, "open", F.sys_open),
    ok(6, "close", F.sys_close),
    ok(7, "waitpid", P.sys_waitpid),
    ok(8, "creat", F.sys_creat),
    ok(9, "link", F.sys_link),
    ok(10, "unlink", F.sys_unlink),
    partial(11, "execve", P.sys_execve, "the partition's architecture only"),
    ok(12, "chdir", F.sys_chdir),
    ok(13, "time", T.sys_time),
    partial(14, "mknod", D.sys_mknod, "FIFOs and socket nodes; devices EPERM"),
    ok(15, "chmod", F.sys_chmod, "kept in the sandbox's table; the host file gets no special bits"),
    ok(16, "lchown", F.sys_lchown16, "16-bit ids; kept in the sandbox's table"),
    ok(19, "lseek", IO.sys_lseek),
    ok(20, "getpid", P.sys_getpid),
    ok(27, "alarm", S.sys_alarm),
    ok(29, "pause", S.sys_pause),
    ok(30, "utime", F.sys_utime),
    ok(33, "access", F.sys_access),
    ok(36, "sync", P.zero, "nothing to flush: writes reach the host file at once"),
    ok(37, "kill", S.sys_kill, "pid, 0, -1 and -pgid; SI_USER with the sender's pid"),
    ok(38, "rename", F.sys_rename),
    ok(39, "mkdir", F.sys_mkdir),
    ok(40, "rmdir", F.sys_rmdir),
    ok(41, "dup", D.sys_dup),
    ok(42, "pipe", D.sys_pipe, "64 KiB; blocks; writes up to PIPE_BUF are atomic"),
    ok(43, "times", SY.sys_times, "per-process CPU time (docs/processes.md)"),
    ok(45, "brk", M.sys_brk),
    ok(48, "signal", S.sys_signal, "System V semantics: SA_RESETHAND | SA_NODEFER"),
    partial(54, "ioctl", D.sys_ioctl, "FIONBIO, FIONREAD, FIOCLEX, FIONCLEX; else ENOTTY"),
    partial(55, "fcntl", D.sys_fcntl, "record locks always granted; pipes stay 64 KiB"),
    ok(57, "setpgid", P.sys_setpgid),
    ok(60, "umask", SY.sys_umask, "applied to open(O_CREAT), creat and mkdir"),
    ok(63, "dup2", D.sys_dup2),
    ok(64, "getppid", P.sys_getppid),
    ok(65, "getpgrp", P.sys_getpgrp),
    ok(66, "setsid", P.sys_setsid),
    ok(67, "sigaction", S.sys_sigaction, "struct old_sigaction: the low 32 signals' mask"),
    ok(68, "sgetmask", S.sys_sgetmask),
    ok(69, "ssetmask", S.sys_ssetmask),
    ok(72, "sigsuspend", S.sys_sigsuspend, "the mask by value, third argument"),
    ok(73, "sigpending", S.sys_sigpending),
    ok(77, "getrusage", SY.sys_getrusage,
       "per-process CPU time (docs/processes.md); ru_utime, ru_stime, ru_maxrss only"),
    ok(78, "gettimeofday", T.sys_gettimeofday),
    ok(82, "select", PL.sys_old_select, "the old one-pointer form"),
    ok(83, "symlink", F.sys_symlink),
    ok(85, "readlink", F.sys_readlink),
    partial(90, "mmap", _old_mmap, "MAP_SHARED of a read-only fd is served MAP_PRIVATE"),
    ok(91, "munmap", M.sys_munmap),
    ok(92, "truncate", F.sys_truncate),
    ok(93, "ftruncate", F.sys_ftruncate),
    partial(94, "fchmod", F.sys_fchmod, "EPERM once the path no longer names the file"),
    partial(95, "fchown", F.sys_fchown16, "16-bit ids; EPERM once the path no longer names it"),
    ok(96, "getpriority", SY.sys_getpriority),
    partial(97, "setpriority", SY.sys_setpriority, "stored; scheduling ignores it"),
    partial(99, "statfs", FI.sys_statfs, "the overlay, sized by the disk quota"),
    partial(100, "fstatfs", FI.sys_fstatfs, "the overlay, sized by the disk quota"),
    partial(102, "socketcall", SK.sys_socketcall, "as the calls; a split send returns its count"),
    partial(104, "setitimer", S.sys_setitimer, "VIRTUAL/PROF count wall-clock time"),
    partial(105, "getitimer", S.sys_getitimer, "VIRTUAL/PROF count wall-clock time"),
    ok(114, "wait4", P.sys_wait4, "rusage: the child's and its reaped children's CPU time"),
    ok(116, "sysinfo", SY.sys_sysinfo, "the partition's memory, uptime, load, processes"),
    ok(118, "fsync", D.sys_fsync),
    ok(119, "sigreturn", S.sys_sigreturn, "the classic frame; sanitized as rt_sigreturn"),
    partial(120, "clone", _clone, "no namespaces, ptrace or shared handlers across processes"),
    ok(122, "uname", SY.sys_uname),
    ok(125, "mprotect", M.sys_mprotect),
    ok(126, "sigprocmask", S.sys_sigprocmask, "SIG_SETMASK replaces the low 32 signals"),
    ok(132, "getpgid", P.sys_getpgid),
    ok(133, "fchdir", F.sys_fchdir),
    partial(136, "personality", SY.sys_personality, "kept per process; flags change nothing"),
    ok(140, "_llseek", _llseek),
    ok(142, "_newselect", PL.sys_select),
    ok(144, "msync", M.sys_msync),
    ok(145, "readv", IO.sys_readv),
    ok(146, "writev", IO.sys_writev),
    ok(147, "getsid", P.sys_getsid),
    ok(148, "fdatasync", D.sys_fsync),
    ok(158, "sched_yield", SY.sys_sched_yield),
    ok(162, "nanosleep", _nanosleep),
    ok(163, "mremap", M.sys_mremap),
    ok(165, "getresuid", SY.sys_getresuid16, "all 0"),
    ok(168, "poll", PL.sys_poll, "console stdin is always reported readable"),
    ok(171, "getresgid", SY.sys_getresuid16, "all 0"),
    partial(172, "prctl", SY.sys_prctl, "PR_SET_NAME/PR_GET_NAME only"),
    ok(173, "rt_sigreturn", S.sys_rt_sigreturn, "flags, segments and mask sanitized"),
    ok(174, "rt_sigaction", S.sys_rt_sigaction, "rt frames for SA_SIGINFO, else classic"),
    ok(175, "rt_sigprocmask", S.sys_rt_sigprocmask),
    ok(176, "rt_sigpending", S.sys_rt_sigpending),
    ok(177, "rt_sigtimedwait", S.rt_sigtimedwait(TS32)),
    ok(178, "rt_sigqueueinfo", S.sys_rt_sigqueueinfo),
    ok(179, "rt_sigsuspend", S.sys_rt_sigsuspend),
    ok(180, "pread64", _pread64),
    ok(181, "pwrite64", _pwrite64),
    ok(182, "chown", F.sys_chown16, "16-bit ids; kept in the sandbox's table"),
    ok(183, "getcwd", F.sys_getcwd),
    ok(186, "sigaltstack", S.sys_sigaltstack, "SS_AUTODISARM too"),
    ok(187, "sendfile", D.sys_sendfile),
    ok(190, "vfork", P.sys_vfork),
    partial(191, "ugetrlimit", SY.sys_getrlimit, "fixed limits; setting them is ignored"),
    partial(192, "mmap2", _mmap2, "MAP_SHARED of a read-only fd is served MAP_PRIVATE"),
    ok(193, "truncate64", _truncate64),
    ok(194, "ftruncate64", _ftruncate64),
    ok(195, "stat64", F.sys_stat),
    ok(196, "lstat64", F.sys_lstat),
    ok(197, "fstat64", F.sys_fstat),
    ok(198, "lchown32", F.sys_lchown, "kept in the sandbox's table"),
    ok(199, "getuid32", P.zero, "the guest runs as uid 0"),
    ok(200, "getgid32", P.zero, "the guest runs as gid 0"),
    ok(201, "geteuid32", P.zero, "the guest runs as uid 0"),
    ok(202, "getegid32", P.zero, "the guest runs as gid 0"),
    ok(205, "getgroups32", P.zero, "no supplementary groups"),
    partial(207, "fchown32", F.sys_fchown, "EPERM once the path no longer names the file"),
    ok(209, "getresuid32", SY.sys_getresuid, "all 0"),
    ok(211, "getresgid32", SY.sys_getresuid, "all 0"),
    ok(212, "chown32", F.sys_chown, "kept in the sandbox's table; the host owner never changes"),
    partial(213, "setuid32", P.zero, "accepted; the identity stays 0"),
    partial(214, "setgid32", P.zero, "accepted; the identity stays 0"),
    partial(219, "madvise", M.sys_madvise, "MADV_DONTNEED only; other advice is accepted"),
    ok(220, "getdents64", F.sys_getdents64),
    partial(221, "fcntl64", D.sys_fcntl, "record locks always granted; pipes stay 64 KiB"),
    ok(224, "gettid", P.sys_gettid, "the main thread is 1"),
    partial(229, "getxattr", FI.sys_getxattr, "no extended attributes are kept: ENODATA"),
    partial(230, "lgetxattr", FI.sys_lgetxattr, "no extended attributes are kept: ENODATA"),
    partial(231, "fgetxattr", FI.sys_fgetxattr, "no extended attributes are kept: ENODATA"),
    partial(232, "listxattr", FI.sys_listxattr, "no extended attributes are kept: empty list"),
    partial(233, "llistxattr", FI.sys_llistxattr, "no extended attributes are kept: empty list"),
    partial(234, "flistxattr", FI.sys_flistxattr, "no extended attributes are kept: empty list"),
    ok(238, "tkill", S.sys_tkill),
    ok(240, "futex", _futex(TS32)),
    ok(242, "sched_getaffinity", SY.sys_sched_getaffinity),
    ok(243, "set_thread_area", P.sys_set_thread_area),
    ok(250, "fadvise64", _fadvise64, "advice only: checked, then ignored"),
    ok(252, "exit_group", P.sys_exit_group),
    ok(254, "epoll_create", PL.sys_epoll_create),
    partial(255, "epoll_ctl", PL.sys_epoll_ctl, "EPOLLET: again after any change"),
    ok(256, "epoll_wait", PL.sys_epoll_wait),
    ok(258, "set_tid_address", P.sys_set_tid_address),
    partial(259, "timer_create", S.sys_timer_create, "CPU-time clocks count wall-clock time"),
    ok(260, "timer_settime", S.timer_settime(TS32)),
    ok(261, "timer_gettime", S.timer_gettime(TS32)),
    ok(262, "timer_getoverrun", S.sys_timer_getoverrun),
    ok(263, "timer_delete", S.sys_timer_delete),
    unsupported(264, "clock_settime", "a partition cannot set the clock"),
    ok(265, "clock_gettime", _clock_gettime(TS32)),
    ok(266, "clock_getres", _clock_getres(TS32)),
    ok(267, "clock_nanosleep", _clock_nanosleep(TS32)),
    partial(268, "statfs64", FI.sys_statfs64, "the overlay, sized by the disk quota"),
    partial(269, "fstatfs64", FI.sys_fstatfs64, "the overlay, sized by the disk quota"),
    ok(270, "tgkill", S.sys_tgkill),
    ok(271, "utimes", F.sys_utimes),
    ok(272, "fadvise64_64", _fadvise64_64, "advice only: checked, then ignored"),
    ok(284, "waitid", P.sys_waitid,
       "rusage: the child's and its reaped children's CPU time; no P_PIDFD"),
    partial(289, "ioprio_set", SY.sys_ioprio_set, "stored; I/O ignores it"),
    ok(290, "ioprio_get", SY.sys_ioprio_get),
    ok(295, "openat", F.sys_openat),
    ok(296, "mkdirat", F.sys_mkdirat),
    partial(297, "mknodat", D.sys_mknodat, "FIFOs and socket nodes; devices EPERM"),
    ok(298, "fchownat", F.sys_fchownat, "kept in the sandbox's table"),
    ok(299, "futimesat", F.sys_futimesat),
    ok(300, "fstatat64", F.sys_newfstatat),
    ok(301, "unlinkat", F.sys_unlinkat),
    ok(302, "renameat", F.sys_renameat),
    ok(303, "linkat", F.sys_linkat, "AT_EMPTY_PATH while the path still names the file"),
    ok(304, "symlinkat", F.sys_symlinkat),
    ok(305, "readlinkat", F.sys_readlinkat),
    ok(306, "fchmodat", F.sys_fchmodat, "kept in the sandbox's table"),
    ok(307, "faccessat", F.sys_faccessat),
    ok(308, "pselect6", PL.sys_pselect6),
    ok(309, "ppoll", PL.sys_ppoll),
    partial(311, "set_robust_list", P.zero, "accepted; robust futexes not released"),
    ok(319, "epoll_pwait", PL.sys_epoll_pwait),
    ok(323, "eventfd", D.sys_eventfd),
    ok(328, "eventfd2", D.sys_eventfd2),
    ok(329, "epoll_create1", PL.sys_epoll_create1),
    ok(320, "utimensat", F.sys_utimensat),
    partial(324, "fallocate", F.sys_fallocate32, "no blocks past EOF; no COLLAPSE/INSERT"),
    ok(330, "dup3", D.sys_dup3),
    ok(331, "pipe2", D.sys_pipe2, "O_NONBLOCK, O_CLOEXEC; O_DIRECT accepted"),
    partial(340, "prlimit64", SY.sys_prlimit64, "fixed limits; setting them is ignored"),
    partial(353, "renameat2", F.sys_renameat2, "RENAME_WHITEOUT: EINVAL"),
    ok(355, "getrandom", SY.sys_getrandom),
    ok(358, "execveat", P.sys_execveat),
    partial(359, "socket", SK.sys_socket, "AF_UNIX in the partition; else EAFNOSUPPORT"),
    partial(360, "socketpair", SK.sys_socketpair, "AF_UNIX in the partition; else EAFNOSUPPORT"),
    ok(361, "bind", SK.sys_bind),
    ok(362, "connect", SK.sys_connect),
    ok(363, "listen", SK.sys_listen),
    ok(364, "accept4", SK.sys_accept4),
    partial(365, "getsockopt", SK.sys_getsockopt, "SOL_SOCKET TYPE, ERROR, PEERCRED, ..."),
    partial(366, "setsockopt", SK.sys_setsockopt, "accepted; changes nothing"),
    ok(367, "getsockname", SK.sys_getsockname),
    ok(368, "getpeername", SK.sys_getpeername),
    ok(369, "sendto", SK.sys_sendto),
    partial(370, "sendmsg", SK.sys_sendmsg, "SCM_RIGHTS; SCM_CREDENTIALS ignored; AF_UNIX only"),
    ok(371, "recvfrom", SK.sys_recvfrom),
    partial(372, "recvmsg", SK.sys_recvmsg, "SCM_RIGHTS; MSG_CTRUNC, MSG_CMSG_CLOEXEC"),
    ok(373, "shutdown", SK.sys_shutdown),
    ok(383, "statx", F.sys_statx),
    ok(384, "arch_prctl", P.sys_arch_prctl),
    unsupported(386, "rseq", "glibc falls back without restartable sequences"),
    ok(403, "clock_gettime64", _clock_gettime(TS64)),
    ok(406, "clock_getres_time64", _clock_getres(TS64)),
    ok(407, "clock_nanosleep_time64", _clock_nanosleep(TS64)),
    ok(408, "timer_gettime64", S.timer_gettime(TS64)),
    ok(409, "timer_settime64", S.timer_settime(TS64)),
    ok(412, "utimensat_time64", F.sys_utimensat_time64),
    ok(413, "pselect6_time64", PL.sys_pselect6_time64),
    ok(414, "ppoll_time64", PL.sys_ppoll_time64),
    ok(421, "rt_sigtimedwait_time64", S.rt_sigtimedwait(TS64)),
    ok(422, "futex_time64", _futex(TS64)),
    unsupported(435, "clone3", "glibc falls back to clone"),
    ok(439, "faccessat2", F.sys_faccessat2),
    ok(441, "epoll_pwait2", PL.sys_epoll_pwait2),
)

TABLE: dict[int, Handler] = dispatch(ENTRIES)
