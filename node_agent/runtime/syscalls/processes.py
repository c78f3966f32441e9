"""Processes and threads: exit, clone, ids, TLS (set_thread_area, arch_prctl)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..gdt import GDT_SIZE
from ..task import FS, GS
from .common import EXIT, E

if TYPE_CHECKING:
    from ..task import Task

CLONE_VM, CLONE_THREAD, CLONE_SETTLS = 0x100, 0x10000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x100000, 0x200000, 0x1000000



def enosys(t: Task, *_: int) -> int:
    """Known syscalls deliberately unsupported (fork, execve, rseq, clone3...)."""
    return E.NOSYS


def zero(t: Task, *_: int) -> int:
    return 0


# -- exit, threads ----------------------------------------------------------------
def sys_exit(t: Task, code: int, *_: int) -> int:
    thread = t.thread
    assert thread is not None
    sched = t.kernel.sched
    if thread.clear_tid:
        try:
            t.mem.put_u32(thread.clear_tid, 0)
            sched.futex_wake(thread.clear_tid, 1)
        except Exception:  # noqa: BLE001 - a bad clear_tid pointer only skips the wake-up
            pass
    sched.thread_exit(thread, code)
    t.kernel.free_gdt(thread)
    return EXIT


def sys_exit_group(t: Task, code: int, *_: int) -> int:
    t.kernel.sched.finish(code & 0xFF)
    return EXIT


def sys_set_tid_address(t: Task, ptr: int, *_: int) -> int:
    assert t.thread is not None
    t.thread.clear_tid = ptr
    return t.thread.tid


def sys_gettid(t: Task, *_: int) -> int:
    assert t.thread is not None
    return t.thread.tid


def sys_getpid(t: Task, *_: int) -> int:
    return 1


def do_clone(t: Task, flags: int, stack: int, ptid: int, ctid: int, tls: int) -> int:
    if not (flags & CLONE_VM and flags & CLONE_THREAD):
        return E.NOSYS                          # fork/vfork: documented limitation
    machine = t.kernel
    parent = t.thread
    child = machine.sched.new_thread(parent.process)
    if child is None:
        return E.AGAIN
    t.copy_registers_to(child, stack, tls if flags & CLONE_SETTLS else None)
    if not t.is64:
        try:
            child.gdt = machine.alloc_gdt()
        except OSError:
            machine.sched.thread_exit(child, 0)
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
