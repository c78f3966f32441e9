"""Process, thread, memory, time and miscellaneous syscalls (architecture-neutral)."""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from .abi import clock_ns, read_timespec, write_timespec
from .files import DeviceFile, HostFile
from .gdt import GDT_SIZE
from .memory import PAGE, page_up
from .syscall_common import BLOCK, EXIT, E, s32

if TYPE_CHECKING:
    from .vcpu import Vcpu

CLONE_VM, CLONE_THREAD, CLONE_SETTLS = 0x100, 0x10000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x100000, 0x200000, 0x1000000
MAP_SHARED, MAP_FIXED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x1, 0x10, 0x20, 0x100000
PROT_EXEC = 4
SIGNALS = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


def enosys(cpu: Vcpu, *_: int) -> int:
    """Known syscalls deliberately unsupported (fork, execve, rseq, clone3...)."""
    return E.NOSYS


def zero(cpu: Vcpu, *_: int) -> int:
    return 0


# -- exit, threads ----------------------------------------------------------------
def sys_exit(cpu: Vcpu, code: int, *_: int) -> int:
    thread = cpu.thread
    assert thread is not None
    sched = cpu.machine.sched
    if thread.clear_tid:
        try:
            cpu.mem.put_u32(thread.clear_tid, 0)
            sched.futex_wake(thread.clear_tid, 1)
        except Exception:  # noqa: BLE001 - a bad clear_tid pointer only skips the wake-up
            pass
    sched.thread_exit(thread, code)
    cpu.machine.free_gdt(thread)
    return EXIT


def sys_exit_group(cpu: Vcpu, code: int, *_: int) -> int:
    cpu.machine.sched.finish(code & 0xFF)
    return EXIT


def sys_set_tid_address(cpu: Vcpu, ptr: int, *_: int) -> int:
    assert cpu.thread is not None
    cpu.thread.clear_tid = ptr
    return cpu.thread.tid


def sys_gettid(cpu: Vcpu, *_: int) -> int:
    assert cpu.thread is not None
    return cpu.thread.tid


def sys_getpid(cpu: Vcpu, *_: int) -> int:
    return 1


def do_clone(cpu: Vcpu, flags: int, stack: int, ptid: int, ctid: int, tls: int) -> int:
    if not (flags & CLONE_VM and flags & CLONE_THREAD):
        return E.NOSYS                          # fork/vfork: documented limitation
    machine = cpu.machine
    child = machine.sched.new_thread()
    if child is None:
        return E.AGAIN
    child.context = cpu.uc.context_save()
    # Inside the hook the saved context still points at the syscall instruction itself.
    child.pending[cpu.pc_reg] = cpu.return_pc()
    child.pending[cpu.ret_reg] = 0
    if stack:
        child.pending[cpu.sp_reg] = stack
    if cpu.is64:
        if flags & CLONE_SETTLS:
            child.pending[X.UC_X86_REG_FS_BASE] = tls
    else:
        parent = cpu.thread
        assert parent is not None
        try:
            child.gdt = machine.alloc_gdt()
        except OSError:
            machine.sched.thread_exit(child, 0)
            return E.AGAIN
        cpu.mem.host_write(child.gdt, cpu.mem.host_read(parent.gdt, GDT_SIZE))
        if flags & CLONE_SETTLS:
            machine.set_thread_area(child, tls)
    if flags & CLONE_PARENT_SETTID:
        cpu.mem.put_u32(ptid, child.tid)
    if flags & CLONE_CHILD_SETTID:
        cpu.mem.put_u32(ctid, child.tid)
    if flags & CLONE_CHILD_CLEARTID:
        child.clear_tid = ctid
    machine.sched.start(child)
    return child.tid


def sys_set_thread_area(cpu: Vcpu, ptr: int, *_: int) -> int:
    assert cpu.thread is not None
    return cpu.machine.set_thread_area(cpu.thread, ptr)


def sys_arch_prctl(cpu: Vcpu, code: int, addr: int, *_: int) -> int:
    if code == 0x1002:                          # ARCH_SET_FS
        cpu.set_reg(X.UC_X86_REG_FS_BASE, addr)
        return 0
    if code == 0x1001:                          # ARCH_SET_GS
        cpu.set_reg(X.UC_X86_REG_GS_BASE, addr)
        return 0
    if code in (0x1003, 0x1004):                # ARCH_GET_FS / ARCH_GET_GS
        reg = X.UC_X86_REG_FS_BASE if code == 0x1003 else X.UC_X86_REG_GS_BASE
        cpu.mem.put_u64(addr, cpu.reg(reg))
        return 0
    return E.INVAL


def _futex_deadline(cpu: Vcpu, ptr: int, fmt: str, absolute: bool, realtime: bool) -> float | None:
    if not ptr:
        return None
    value = read_timespec(cpu.mem, ptr, fmt)
    if not absolute:
        return time.monotonic() + value
    now = time.time() if realtime else time.monotonic() + cpu.machine.mono_offset_ns / 1e9
    return time.monotonic() + (value - now)


def do_futex(cpu: Vcpu, uaddr: int, op: int, val: int, timeout: int, uaddr2: int, val3: int,
             fmt: str) -> int:
    sched = cpu.machine.sched
    cmd = op & 0x7F
    val &= 0xFFFFFFFF
    if cmd in (0, 9):                            # FUTEX_WAIT, FUTEX_WAIT_BITSET
        bitset = 0xFFFFFFFF if cmd == 0 else val3 & 0xFFFFFFFF
        if not bitset:
            return E.INVAL
        deadline = _futex_deadline(cpu, timeout, fmt, cmd == 9, bool(op & 256))
        assert cpu.thread is not None
        rc = sched.futex_wait(cpu.thread, uaddr, val, cpu.mem.u32, deadline, bitset)
        return BLOCK if rc == 0 else rc
    if cmd in (1, 10):                           # FUTEX_WAKE, FUTEX_WAKE_BITSET
        return sched.futex_wake(uaddr, val, 0xFFFFFFFF if cmd == 1 else val3 & 0xFFFFFFFF)
    if cmd in (3, 4):                            # FUTEX_REQUEUE, FUTEX_CMP_REQUEUE
        with sched.cond:
            if cmd == 4 and cpu.mem.u32(uaddr) != val3 & 0xFFFFFFFF:
                return E.AGAIN
            return sched.futex_requeue(uaddr, val, timeout & 0x7FFFFFFF, uaddr2)
    if cmd == 5:                                 # FUTEX_WAKE_OP
        with sched.cond:
            old = cpu.mem.u32(uaddr2)
            kind, cmp = (val3 >> 28) & 7, (val3 >> 24) & 15
            oparg, cmparg = (val3 >> 12) & 0xFFF, val3 & 0xFFF
            if kind & 8:
                oparg = 1 << oparg
            new = [oparg, old + oparg, old | oparg, old & ~oparg, old ^ oparg][kind & 7]
            cpu.mem.put_u32(uaddr2, new)
            woken = sched.futex_wake(uaddr, val)
            hit = [old == cmparg, old != cmparg, old < cmparg, old <= cmparg, old > cmparg,
                   old >= cmparg][cmp] if cmp < 6 else False
            if hit:
                woken += sched.futex_wake(uaddr2, timeout & 0x7FFFFFFF)
            return woken
    return E.NOSYS


# -- memory ---------------------------------------------------------------------------
def sys_brk(cpu: Vcpu, addr: int, *_: int) -> int:
    return cpu.mem.set_brk(addr)


def do_mmap(cpu: Vcpu, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
    """Anonymous memory, or a lazily read private copy of a regular file (memory.py).

    MAP_SHARED is served as MAP_PRIVATE (the guest's writes never reach the file), as before.
    /dev/zero maps anonymous memory; other non-regular files give ENODEV, a file not open
    for reading EACCES, as on Linux.
    """
    mem = cpu.mem
    if length == 0 or off & (PAGE - 1):
        return E.INVAL
    if length > mem.size:
        return E.NOMEM
    fixed = addr if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) else None
    if fixed is not None and fixed & (PAGE - 1):
        return E.INVAL
    backing: tuple[int, int] | None = None
    if not flags & MAP_ANONYMOUS:
        file = cpu.machine.fds.get(s32(fd))
        if isinstance(file, DeviceFile) and file.gpath == "/dev/zero":
            pass
        elif not isinstance(file, HostFile):
            return E.NODEV
        elif not file.readable:
            return E.ACCES
        else:
            if off + page_up(length) > 1 << 63:
                return E.OVERFLOW
            backing = (file.fd, off)
    result = mem.mmap(length, fixed, backing)
    if result is None:
        return E.NOMEM
    if prot & PROT_EXEC:
        if not mem.make_executable(result, length):
            mem.munmap(result, length)
            return E.NOMEM
        cpu.refresh_exec()
    return result


def sys_munmap(cpu: Vcpu, addr: int, length: int, *_: int) -> int:
    if addr & 0xFFF:
        return E.INVAL
    return 0 if cpu.mem.munmap(addr, length) else E.NOMEM


def sys_mprotect(cpu: Vcpu, addr: int, length: int, prot: int, *_: int) -> int:
    if prot & PROT_EXEC:
        if not cpu.mem.make_executable(addr, length):
            return E.NOMEM
        cpu.refresh_exec()
    return 0


def sys_mremap(cpu: Vcpu, old: int, old_size: int, new_size: int, flags: int, *_: int) -> int:
    mem = cpu.mem
    if not mem.is_mapped(old, old_size):
        return E.FAULT
    grown = mem.resize(old, old_size, new_size)
    if grown is not None:
        return grown
    if not flags & 1:                            # MREMAP_MAYMOVE
        return E.NOMEM
    new = mem.mmap_anon(new_size)
    if new is None:
        return E.NOMEM
    mem.copy(new, old, min(old_size, new_size))
    mem.munmap(old, old_size)
    return new


def sys_madvise(cpu: Vcpu, addr: int, length: int, advice: int, *_: int) -> int:
    if advice == 4:                              # MADV_DONTNEED: zero, or the file again
        if addr & (PAGE - 1):
            return E.INVAL
        if cpu.mem.is_mapped(addr, page_up(length)):
            cpu.mem.discard(addr, length)
    return 0


# -- time ---------------------------------------------------------------------------
def do_clock_gettime(cpu: Vcpu, clock: int, ptr: int, fmt: str) -> int:
    write_timespec(cpu.mem, ptr, fmt, clock_ns(clock, cpu.machine.mono_offset_ns))
    return 0


def do_clock_getres(cpu: Vcpu, clock: int, ptr: int, fmt: str) -> int:
    if ptr:
        cpu.mem.write(ptr, struct.pack(fmt, 0, 1))
    return 0


def sys_gettimeofday(cpu: Vcpu, tv: int, tz: int, *_: int) -> int:
    if tv:
        write_timespec(cpu.mem, tv, cpu.machine.abi.ts_fmt, time.time_ns(), micro=True)
    if tz:
        cpu.mem.write(tz, bytes(8))
    return 0


def sys_time(cpu: Vcpu, ptr: int, *_: int) -> int:
    now = int(time.time())
    if ptr:
        cpu.machine.abi.write_word(cpu.mem, ptr, now)
    return now


def _sleep(cpu: Vcpu, seconds: float) -> int:
    if seconds <= 0:
        return 0
    assert cpu.thread is not None
    cpu.machine.sched.sleep(cpu.thread, seconds)
    return BLOCK


def do_nanosleep(cpu: Vcpu, req: int, fmt: str) -> int:
    return _sleep(cpu, read_timespec(cpu.mem, req, fmt))


def do_clock_nanosleep(cpu: Vcpu, clock: int, flags: int, req: int, fmt: str) -> int:
    value = read_timespec(cpu.mem, req, fmt)
    if flags & 1:                                # TIMER_ABSTIME
        value -= clock_ns(clock, cpu.machine.mono_offset_ns) / 1e9
    return _sleep(cpu, value)


# -- identity, limits, signals ----------------------------------------------------------
def sys_uname(cpu: Vcpu, buf: int, *_: int) -> int:
    fields = [b"Linux", cpu.machine.spec.name.encode()[:64], b"6.1.0-viridian",
              b"#1 SMP PREEMPT_DYNAMIC", cpu.machine.abi.name.encode(), b"(none)"]
    cpu.mem.write(buf, b"".join(f.ljust(65, b"\0") for f in fields))
    return 0


def sys_getrandom(cpu: Vcpu, buf: int, length: int, *_: int) -> int:
    length = min(length, 1 << 20)
    cpu.mem.write(buf, os.urandom(length))
    return length


def sys_sched_yield(cpu: Vcpu, *_: int) -> int:
    if cpu.machine.sched.has_waiting():
        cpu.preempt(0.0)
    return 0


def sys_sched_getaffinity(cpu: Vcpu, pid: int, size: int, ptr: int, *_: int) -> int:
    word = cpu.machine.abi.word
    if size < word:
        return E.INVAL
    cpu.mem.write(ptr, ((1 << cpu.machine.spec.vcpus) - 1).to_bytes(word, "little"))
    return word


def _limit(cpu: Vcpu, resource: int) -> tuple[int, int]:
    inf = (1 << 64) - 1
    table = {3: (8 << 20, inf), 7: (1024, 1024), 9: (cpu.machine.spec.memory_bytes,) * 2,
             2: (cpu.machine.spec.memory_bytes,) * 2, 4: (0, inf)}
    return table.get(resource, (inf, inf))


def sys_prlimit64(cpu: Vcpu, pid: int, resource: int, new: int, old: int, *_: int) -> int:
    if old:
        cpu.mem.write(old, struct.pack("<QQ", *_limit(cpu, resource)))
    return 0


def sys_getrlimit(cpu: Vcpu, resource: int, ptr: int, *_: int) -> int:
    word = cpu.machine.abi.word
    cur, mx = _limit(cpu, resource)
    cap = (1 << (8 * word)) - 1
    cpu.mem.write(ptr, struct.pack(f"<2{'Q' if word == 8 else 'I'}", min(cur, cap), min(mx, cap)))
    return 0


def sys_rt_sigaction(cpu: Vcpu, sig: int, act: int, oact: int, size: int, *_: int) -> int:
    if oact:
        cpu.mem.write(oact, bytes(3 * cpu.machine.abi.word + min(size, 128)))
    return 0


def sys_rt_sigprocmask(cpu: Vcpu, how: int, new: int, old: int, size: int, *_: int) -> int:
    if old:
        cpu.mem.write(old, bytes(min(size, 128)))
    return 0


def _signal_self(cpu: Vcpu, sig: int) -> int:
    if sig == 0:
        return 0
    name = SIGNALS.get(sig, f"signal {sig}")
    cpu.machine.event("GuestSignal", f"guest sent itself {name}; terminating")
    cpu.machine.sched.finish(128 + sig)
    return EXIT


def sys_kill(cpu: Vcpu, pid: int, sig: int, *_: int) -> int:
    if s32(pid) not in (0, -1, 1):
        return E.SRCH
    return _signal_self(cpu, s32(sig))


def sys_tkill(cpu: Vcpu, tid: int, sig: int, *_: int) -> int:
    if s32(tid) not in cpu.machine.sched.threads:
        return E.SRCH
    return _signal_self(cpu, s32(sig))


def sys_tgkill(cpu: Vcpu, tgid: int, tid: int, sig: int, *_: int) -> int:
    return sys_tkill(cpu, tid, sig)


def sys_prctl(cpu: Vcpu, option: int, arg: int, *_: int) -> int:
    if option == 15:                            # PR_SET_NAME
        return 0
    if option == 16:                            # PR_GET_NAME
        cpu.mem.write(arg, cpu.machine.spec.name.encode()[:15].ljust(16, b"\0"))
        return 0
    return E.INVAL


def sys_umask(cpu: Vcpu, mask: int, *_: int) -> int:
    old = cpu.machine.umask
    cpu.machine.umask = mask & 0o777
    return old


def sys_sysinfo(cpu: Vcpu, ptr: int, *_: int) -> int:
    mem = cpu.machine.spec.memory_bytes
    word = "Q" if cpu.machine.abi.word == 8 else "I"
    uptime = int(time.monotonic() - cpu.machine.started)
    cap = (1 << (8 * cpu.machine.abi.word)) - 1
    data = struct.pack(f"<{word}3{word}6{word}H", uptime, 0, 0, 0, min(mem, cap),
                       min(mem // 2, cap), 0, 0, 0, 0, 1)
    cpu.mem.write(ptr, data + struct.pack(f"<{word}{word}I", 0, 0, 1))
    return 0


