"""Processes and threads: exit, clone, ids, TLS (set_thread_area, arch_prctl)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from .. import accounting
from ..gdt import GDT_SIZE, boot_frame
from ..memory import GDT_AREA, GuestFault
from ..procfs import resident_bytes
from ..proctable import (
    P_ALL,
    P_PGID,
    P_PID,
    WEXITED,
    WNOWAIT,
    WSTOPPED,
    WaitReport,
    WaitRequest,
    exit_status,
    pack_siginfo_child,
)
from ..program import ExecError, load_program
from ..spec import ImageError
from ..task import FS, GS
from .common import BLOCK, EXIT, E, s32
from .paths import path_at, read_path
from .system import exec_comm, exec_personality

if TYPE_CHECKING:
    from ..task import Task

CLONE_VM, CLONE_SIGHAND, CLONE_VFORK, CLONE_THREAD = 0x100, 0x800, 0x4000, 0x10000
CLONE_SETTLS, CLONE_PARENT_SETTID = 0x80000, 0x100000
CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x200000, 0x1000000
#: Namespaces, ptrace, io contexts, cgroups: nothing a partition's process may ask for.
CLONE_NEWNS_ETC = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | \
    0x20000000 | 0x40000000 | 0x80000000 | 0x2000 | 0x00800000
SIGCHLD = 17
WNOHANG, WUNTRACED, WCONTINUED = 1, 2, 8
WNOTHREAD, WALL, WCLONE = 0x20000000, 0x40000000, 0x80000000
#: Linux's execve bounds (MAX_ARG_STRINGS is 0x7FFFFFFF there; a partition's is smaller).
MAX_ARG_STRINGS = 1 << 16
MAX_ARG_STRLEN = 32 * 4096
ARG_MAX = 2 << 20
AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW = 0x1000, 0x100



def enosys(t: Task, *_: int) -> int:
    """Known syscalls deliberately unsupported (fork, execve, rseq, clone3...)."""
    return E.NOSYS


def zero(t: Task, *_: int) -> int:
    return 0


# -- exit, threads ----------------------------------------------------------------
def sys_exit(t: Task, code: int, *_: int) -> int:
    """The calling thread ends; its process ends with ``code`` when it was the last."""
    thread = t.thread
    sched = t.kernel.sched
    if thread.clear_tid:
        try:
            t.mem.put_u32(thread.clear_tid, 0)
            sched.futex_wake(t.mem.futex_key(thread.clear_tid), 1)
        except Exception:  # noqa: BLE001 - a bad clear_tid pointer only skips the wake-up
            pass
    t.kernel.free_gdt(thread)
    t.kernel.procs.thread_exit(thread, code)
    return EXIT


def sys_exit_group(t: Task, code: int, *_: int) -> int:
    t.kernel.procs.exit_process(t.process, exit_status(code))
    return EXIT


def sys_set_tid_address(t: Task, ptr: int, *_: int) -> int:
    t.thread.clear_tid = ptr
    return t.thread.tid


def sys_gettid(t: Task, *_: int) -> int:
    return t.thread.tid


def sys_getpid(t: Task, *_: int) -> int:
    return t.process.pid


def sys_getppid(t: Task, *_: int) -> int:
    return t.process.ppid


def do_clone(t: Task, flags: int, stack: int, ptid: int, ctid: int, tls: int) -> int:
    if not flags & CLONE_THREAD:
        return _new_process(t, flags, stack, ptid, ctid, tls)
    if not flags & CLONE_VM:
        return E.INVAL                          # CLONE_THREAD needs CLONE_VM (and SIGHAND)
    machine = t.kernel
    parent = t.thread
    child = machine.sched.new_thread(parent.process)
    if child is None:
        return E.AGAIN
    t.copy_registers_to(child, stack, tls if flags & CLONE_SETTLS else None)
    if not t.is64:
        try:
            child.gdt = machine.alloc_gdt(parent.process)
        except OSError:
            machine.procs.thread_exit(child, 0)
            return E.AGAIN
        t.mem.host_write(child.gdt, t.mem.host_read(parent.gdt, GDT_SIZE))
        if flags & CLONE_SETTLS:
            machine.set_thread_area(child, tls)
    if flags & CLONE_PARENT_SETTID:
        t.mem.put_u32(ptid, child.tid)
    if flags & CLONE_CHILD_SETTID:
        t.mem.put_u32(ctid, child.tid)
    if flags & CLONE_CHILD_CLEARTID:
        child.clear_tid = ctid
    machine.sched.start(child)
    return child.tid


def _new_process(t: Task, flags: int, stack: int, ptid: int, ctid: int, tls: int) -> int:
    """fork, vfork, and clone without CLONE_THREAD: a new process. With CLONE_VM it shares
    the caller's memory (vfork, posix_spawn); with CLONE_VFORK the caller waits until the
    child execs or ends."""
    if flags & CLONE_NEWNS_ETC:
        return E.PERM                           # namespaces, ptrace: not for a guest
    if flags & CLONE_SIGHAND:
        return E.INVAL                          # shared handlers across processes: no
    procs = t.kernel.procs
    made = procs.fork(t.thread, share_memory=bool(flags & CLONE_VM))
    if isinstance(made, int):
        return made
    child, thread = made
    t.copy_registers_to(thread, stack, tls if flags & CLONE_SETTLS else None)
    if flags & CLONE_SETTLS and not t.is64:
        t.kernel.set_thread_area(thread, tls)
    if flags & CLONE_CHILD_SETTID:
        child.mem.put_u32(ctid, thread.tid)
    if flags & CLONE_CHILD_CLEARTID:
        thread.clear_tid = ctid
    if flags & CLONE_PARENT_SETTID:
        t.mem.put_u32(ptid, child.pid)
    sched = t.kernel.sched
    with sched.cond:
        sched.start(thread)
        if flags & CLONE_VFORK:
            procs.vfork_wait(t.thread, child)
            return BLOCK
    return child.pid


def sys_fork(t: Task, *_: int) -> int:
    return _new_process(t, SIGCHLD, 0, 0, 0, 0)


def sys_vfork(t: Task, *_: int) -> int:
    return _new_process(t, CLONE_VM | CLONE_VFORK | SIGCHLD, 0, 0, 0, 0)


# -- execve ----------------------------------------------------------------------------
def _string_array(t: Task, ptr: int) -> list[str]:
    """A NULL-terminated array of string pointers (argv, envp), bounded as Linux bounds
    them: at most MAX_ARG_STRINGS entries and ARG_MAX bytes in all (E2BIG past that)."""
    out: list[str] = []
    if not ptr:
        return out
    word = t.abi.word
    total = 0
    for index in range(MAX_ARG_STRINGS + 1):
        raw = t.mem.read(ptr + index * word, word)
        item = int.from_bytes(raw, "little")
        if item == 0:
            return out
        if index == MAX_ARG_STRINGS:
            break
        try:
            text = t.mem.read_cstr(item, MAX_ARG_STRLEN)
        except GuestFault:
            t.mem.read(item, 1)                 # EFAULT when it is not there at all
            raise OSError(errno.E2BIG, "argument too long") from None
        total += len(text) + 1 + word
        if total > ARG_MAX:
            break
        out.append(text.decode("utf-8", "surrogateescape"))
    raise OSError(errno.E2BIG, "argument list too long")


def sys_execve(t: Task, path_ptr: int, argv_ptr: int, envp_ptr: int, *_: int) -> int:
    return _execve(t, read_path(t, path_ptr), argv_ptr, envp_ptr)


def sys_execveat(t: Task, dirfd: int, path_ptr: int, argv_ptr: int, envp_ptr: int,
                 flags: int, *_: int) -> int:
    if flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        return E.INVAL
    path, base = path_at(t, dirfd, path_ptr)
    if not path:
        return E.NOENT                          # AT_EMPTY_PATH (fexecve): not supported
    return _execve(t, path if path.startswith("/") else f"{base.rstrip('/')}/{path}",
                   argv_ptr, envp_ptr)


def _execve(t: Task, path: str, argv_ptr: int, envp_ptr: int) -> int:
    """Replace the calling process's program. On success the thread restarts at the new
    program's first instruction (its other threads end); on failure nothing changed."""
    argv = _string_array(t, argv_ptr)
    env = _string_array(t, envp_ptr)
    kernel = t.kernel
    process = t.process
    try:
        program = load_program(kernel.fs, path, argv, env, kernel.spec.memory_bytes,
                               process.cwd)
    except ExecError as exc:
        return -exc.errno
    except ImageError:
        return E.NOEXEC
    except MemoryError:
        return E.NOMEM
    program.mem.uid = kernel.procs.new_space_uid()
    old = process.mem
    thread = t.thread
    process.mem = program.mem
    process.exe, process.argv = program.exe, program.argv
    process.comm, process.thread_comm = exec_comm(path), {}
    process.personality = exec_personality(process.personality, program.arch)
    process.gdt_free = list(range(GDT_AREA // GDT_SIZE))
    process.fds.close_on_exec()
    process.signals.reset_on_exec()
    thread.clear_tid = 0
    thread.gdt = kernel.alloc_gdt(process)
    code, frame = boot_frame(program.arch, program.entry, program.sp)
    program.mem.host_write(program.mem.boot, code)
    program.mem.write(program.sp - len(frame), frame)
    t.start_program(program.mem.boot, program.sp - len(frame), program.arch == "x86_64")
    kernel.procs.exec_done(thread, old)
    return BLOCK


# -- wait -----------------------------------------------------------------------------
def _rusage(t: Task, ptr: int, report: WaitReport) -> None:
    """The reported child's struct rusage: its CPU time and its reaped children's, and its
    peak resident size (measured now if it still runs)."""
    if not ptr:
        return
    maxrss = report.maxrss
    child = report.child
    if child.exit_status is None:
        maxrss = max(maxrss, accounting.note_rss(child, resident_bytes(child.mem) // 1024))
    t.mem.write(ptr, accounting.rusage(t.is64, report.utime, report.stime, maxrss))


def _wait(t: Task, request: WaitRequest) -> WaitReport | int:
    """The process table's wait, parking the caller (BLOCK) until a child changes."""
    with t.kernel.sched.cond:
        found = t.kernel.procs.wait(t.thread, request)
        if found == -1:
            t.arm_restart()
            return BLOCK
        return found


def sys_wait4(t: Task, pid: int, status_ptr: int, options: int, rusage: int, *_: int) -> int:
    pid = s32(pid)
    if options & ~(WNOHANG | WUNTRACED | WCONTINUED | WALL | WCLONE | WNOTHREAD):
        return E.INVAL
    options |= WEXITED                          # wait4 always reports ended children
    if pid == -1:
        request = WaitRequest(P_ALL, 0, options)
    elif pid > 0:
        request = WaitRequest(P_PID, pid, options)
    else:
        request = WaitRequest(P_PGID, t.process.pgid if pid == 0 else -pid, options)
    found = _wait(t, request)
    if isinstance(found, int):
        return found
    if status_ptr:
        t.mem.put_u32(status_ptr, found.status)
    _rusage(t, rusage, found)
    return found.child.pid


def sys_waitpid(t: Task, pid: int, status_ptr: int, options: int, *_: int) -> int:
    return sys_wait4(t, pid, status_ptr, options, 0)


def sys_waitid(t: Task, idtype: int, ident: int, infop: int, options: int, rusage: int,
               *_: int) -> int:
    idtype, ident = s32(idtype), s32(ident)
    events = WEXITED | WSTOPPED | WCONTINUED
    if idtype not in (P_ALL, P_PID, P_PGID) or not options & events or options & ~(
            events | WNOHANG | WNOWAIT | WALL | WCLONE | WNOTHREAD):
        return E.INVAL
    if idtype == P_PGID and ident == 0:
        ident = t.process.pgid
    found = _wait(t, WaitRequest(idtype, ident, options))
    if isinstance(found, int):
        if found == 0 and infop:
            t.mem.write(infop, bytes(128))
        return found
    if infop:
        t.mem.write(infop, pack_siginfo_child(t.is64, found))
    _rusage(t, rusage, found)
    return 0


# -- process groups and sessions --------------------------------------------------------
def sys_setpgid(t: Task, pid: int, pgid: int, *_: int) -> int:
    return t.kernel.procs.setpgid(t.process, s32(pid), s32(pgid))


def sys_getpgid(t: Task, pid: int, *_: int) -> int:
    pid = s32(pid)
    target = t.process if pid == 0 else t.kernel.procs.lookup(pid)
    return E.SRCH if target is None else target.pgid


def sys_getpgrp(t: Task, *_: int) -> int:
    return t.process.pgid


def sys_setsid(t: Task, *_: int) -> int:
    return t.kernel.procs.setsid(t.process)


def sys_getsid(t: Task, pid: int, *_: int) -> int:
    pid = s32(pid)
    target = t.process if pid == 0 else t.kernel.procs.lookup(pid)
    return E.SRCH if target is None else target.sid


def sys_set_thread_area(t: Task, ptr: int, *_: int) -> int:
    assert t.thread is not None
    return t.kernel.set_thread_area(t.thread, ptr)


def sys_arch_prctl(t: Task, code: int, addr: int, *_: int) -> int:
    if code == 0x1002:                          # ARCH_SET_FS
        t.set_segment_base(FS, addr)
        return 0
    if code == 0x1001:                          # ARCH_SET_GS
        t.set_segment_base(GS, addr)
        return 0
    if code in (0x1003, 0x1004):                # ARCH_GET_FS / ARCH_GET_GS
        t.mem.put_u64(addr, t.segment_base(FS if code == 0x1003 else GS))
        return 0
    return E.INVAL
