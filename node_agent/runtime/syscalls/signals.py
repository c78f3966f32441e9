"""Signal syscalls: actions, masks, sending, waiting, alternate stacks, sigreturn, timers.

The state and delivery live in ../signals.py; these handlers read and write the guest's
structures (struct k_sigaction, sigset_t, stack_t, siginfo, itimerval, itimerspec,
sigevent) in each architecture's layout and call into it.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from ..abi import read_timespec
from ..sigframe import SS_DISABLE, SS_ONSTACK
from ..signals import (
    ERESTARTNOHAND,
    NSIG,
    SA_NODEFER,
    SA_RESETHAND,
    SI_QUEUE,
    SI_TKILL,
    SI_USER,
    SIG_DFL,
    SIGALRM,
    SIGKILL,
    SIGPROF,
    SIGSTOP,
    SIGVTALRM,
    SS_AUTODISARM,
    UNBLOCKABLE,
    Action,
    SigInfo,
    Timer,
    bit,
    refresh,
    send,
    take,
)
from ..threads import DEAD
from .common import BLOCK, EXIT, E, Handler, s32

if TYPE_CHECKING:
    from ..task import Task

MINSIGSTKSZ = 2048
MAX_TIMERS = 256                  # POSIX timers per process
SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID = 0, 1, 4
_TIMER_CLOCKS = {0, 1, 2, 3, 7}   # REALTIME, MONOTONIC, the CPU-time clocks, BOOTTIME


def _sigset(t: Task, ptr: int, size: int) -> int:
    if size != 8:
        raise OSError(22, "sigsetsize must be 8")
    return t.mem.u64(ptr) & ((1 << NSIG) - 1)


def _died(t: Task) -> bool:
    return t.thread.state == DEAD or t.process.exit_status is not None or t.kernel.sched.done


# -- actions and masks ------------------------------------------------------------------
def sys_rt_sigaction(t: Task, sig: int, act: int, oact: int, size: int, *_: int) -> int:
    if size != 8:
        return E.INVAL
    layout = "<QQQQ" if t.is64 else "<IIIQ"       # handler, flags, restorer, mask
    return _sigaction(t, sig, act, oact, layout, (0, 1, 2, 3), (1 << 64) - 1)


def sys_sigaction(t: Task, sig: int, act: int, oact: int, *_: int) -> int:
    """i386 sigaction: struct old_sigaction, a 32-bit mask (the rt mask's upper half is
    neither set nor reported)."""
    # struct old_sigaction: handler, mask, flags, restorer
    return _sigaction(t, sig, act, oact, "<IIII", (0, 2, 3, 1), 0xFFFFFFFF)


def _sigaction(t: Task, sig: int, act: int, oact: int, layout: str,
               order: tuple[int, int, int, int], width: int) -> int:
    """Both forms: ``order`` gives the struct positions of handler, flags, restorer and mask,
    ``width`` the signals the mask field holds."""
    sig = s32(sig)
    if not 1 <= sig <= NSIG or (act and sig in (SIGKILL, SIGSTOP)):
        return E.INVAL
    new = None
    if act:
        raw = struct.unpack(layout, t.mem.read(act, struct.calcsize(layout)))
        handler, flags, restorer, mask = (raw[i] for i in order)
        mask &= width
        new = Action(handler, flags & 0xFFFFFFFF, mask & ~UNBLOCKABLE & ((1 << NSIG) - 1),
                     restorer)
    sched = t.kernel.sched
    with sched.cond:
        ps = t.process.signals
        old = ps.actions[sig]
        if oact:
            fields = [0, 0, 0, 0]
            for i, value in zip(order, (old.handler, old.flags, old.restorer,
                                        old.mask & width), strict=True):
                fields[i] = value
            t.mem.write(oact, struct.pack(layout, *fields))
        if new is not None:
            _install(t, sig, new)
    return 0


def _install(t: Task, sig: int, new: Action) -> None:
    """Caller holds sched.cond: ``new`` becomes ``sig``'s action in the calling process."""
    ps = t.process.signals
    ps.actions[sig] = new
    if ps.ignored(sig):                    # POSIX: pending instances are discarded
        ps.pending.pop(sig, None)
        for th in t.kernel.sched.threads.values():
            if th.process is t.process:
                th.sig.pending.pop(sig, None)


def sys_signal(t: Task, sig: int, handler: int, *_: int) -> int:
    """i386 signal(2): System V semantics (SA_RESETHAND | SA_NODEFER); the old handler."""
    sig = s32(sig)
    if not 1 <= sig <= NSIG or sig in (SIGKILL, SIGSTOP):
        return E.INVAL
    with t.kernel.sched.cond:
        old = t.process.signals.actions[sig].handler
        _install(t, sig, Action(handler, SA_RESETHAND | SA_NODEFER))
    return old


def sys_rt_sigprocmask(t: Task, how: int, new: int, old: int, size: int, *_: int) -> int:
    if size != 8:
        return E.INVAL
    value = _sigset(t, new, size) if new else None
    if old:
        t.mem.put_u64(old, t.thread.sig.blocked)
    return _set_mask(t, how, value, (1 << 64) - 1)


def sys_sigprocmask(t: Task, how: int, new: int, old: int, *_: int) -> int:
    """i386 sigprocmask: a 32-bit set; SIG_SETMASK replaces only the low 32 signals."""
    value = t.mem.u32(new) if new else None
    if old:
        t.mem.put_u32(old, t.thread.sig.blocked & 0xFFFFFFFF)
    return _set_mask(t, how, value, 0xFFFFFFFF)


def _set_mask(t: Task, how: int, value: int | None, width: int) -> int:
    """SIG_BLOCK / SIG_UNBLOCK / SIG_SETMASK ``value`` (None: only read); SIG_SETMASK
    replaces the signals in ``width``."""
    ts = t.thread.sig
    current = ts.blocked
    if value is not None:
        if how == 0:                              # SIG_BLOCK
            current |= value
        elif how == 1:                            # SIG_UNBLOCK
            current &= ~value
        elif how == 2:                            # SIG_SETMASK
            current = (current & ~width) | value
        else:
            return E.INVAL
    with t.kernel.sched.cond:
        ts.blocked = current & ~UNBLOCKABLE
        refresh(t.thread)
    return 0


def sys_sgetmask(t: Task, *_: int) -> int:
    """i386 sgetmask: the low 32 signals of the calling thread's mask."""
    return t.thread.sig.blocked & 0xFFFFFFFF


def sys_ssetmask(t: Task, mask: int, *_: int) -> int:
    """i386 ssetmask: replace the low 32 signals of the mask; the old ones."""
    old = t.thread.sig.blocked & 0xFFFFFFFF
    _set_mask(t, 2, mask & 0xFFFFFFFF, 0xFFFFFFFF)
    return old


def sys_rt_sigpending(t: Task, ptr: int, size: int, *_: int) -> int:
    if size > 8:
        return E.INVAL
    t.mem.write(ptr, _pending_blocked(t).to_bytes(8, "little")[:size])
    return 0


def sys_sigpending(t: Task, ptr: int, *_: int) -> int:
    """i386 sigpending: the low 32 signals."""
    t.mem.put_u32(ptr, _pending_blocked(t) & 0xFFFFFFFF)
    return 0


def _pending_blocked(t: Task) -> int:
    with t.kernel.sched.cond:
        ts = t.thread.sig
        pending = 0
        for queue in (ts.pending, t.process.signals.pending):
            for sig in queue:
                pending |= bit(sig)
        return pending & ts.blocked


def sys_sigaltstack(t: Task, ss: int, old: int, *_: int) -> int:
    layout = "<QiiQ" if t.is64 else "<IiI"
    ts = t.thread.sig
    sp = t.get_regs()["rsp" if t.is64 else "esp"]
    ss_sp, ss_flags, ss_size = ts.altstack
    onstack = ss_size > 0 and ss_sp < sp <= ss_sp + ss_size
    new = None
    if ss:
        raw = struct.unpack(layout, t.mem.read(ss, struct.calcsize(layout)))
        new_sp, new_flags, new_size = (raw[0], raw[1], raw[3]) if t.is64 else raw
        new = (new_sp, new_flags, new_size)
    if old:
        flags = SS_ONSTACK if onstack else ss_flags
        values = (ss_sp, flags, 0, ss_size) if t.is64 else (ss_sp, flags, ss_size)
        t.mem.write(old, struct.pack(layout, *values))
    if new is not None:
        new_sp, new_flags, new_size = new
        if onstack:
            return E.PERM
        mode = new_flags & ~SS_AUTODISARM
        if mode not in (0, SS_ONSTACK, SS_DISABLE):
            return E.INVAL
        if mode == SS_DISABLE:
            ts.altstack = (0, SS_DISABLE, 0)
        elif new_size < MINSIGSTKSZ:
            return E.NOMEM
        else:
            ts.altstack = (new_sp, new_flags & SS_AUTODISARM, new_size)
    return 0


def _sigreturn(t: Task, kind: str) -> int:
    with t.kernel.sched.cond:
        t.thread.sig.sigreturn = kind
        t.thread.sig_dirty = True               # the vCPU restores from the frame next
    return 0


def sys_rt_sigreturn(t: Task, *_: int) -> int:
    return _sigreturn(t, "rt")


def sys_sigreturn(t: Task, *_: int) -> int:
    """i386's classic (non-SA_SIGINFO) frame."""
    return _sigreturn(t, "classic")


# -- sending ------------------------------------------------------------------------------
def sys_kill(t: Task, pid: int, sig: int, *_: int) -> int:
    pid, sig = s32(pid), s32(sig)
    if not 0 <= sig <= NSIG:
        return E.INVAL
    me = t.process
    procs = t.kernel.processes
    if pid > 0:
        found = procs.get(pid)
        targets = [found] if found is not None else []
    elif pid == 0:
        targets = [p for p in procs.values() if p.pgid == me.pgid]
    elif pid == -1:
        targets = [p for p in procs.values() if p.pid > 1 and p is not me]
    elif pid == -(1 << 31):
        targets = []
    else:
        targets = [p for p in procs.values() if p.pgid == -pid]
    if not targets:
        return E.SRCH
    if sig:
        for process in targets:
            send(t.kernel, process, None, SigInfo(sig, SI_USER, pid=me.pid), current=t.thread)
    return EXIT if _died(t) else 0


def _thread_kill(t: Task, tgid: int, tid: int, sig: int) -> int:
    sig = s32(sig)
    if tid <= 0 or not 0 <= sig <= NSIG:
        return E.INVAL
    target = t.kernel.sched.threads.get(tid)
    if target is None or (tgid > 0 and target.process.pid != tgid):
        return E.SRCH
    if sig:
        send(t.kernel, target.process, target, SigInfo(sig, SI_TKILL, pid=t.process.pid),
             current=t.thread)
    return EXIT if _died(t) else 0


def sys_tkill(t: Task, tid: int, sig: int, *_: int) -> int:
    return _thread_kill(t, 0, s32(tid), sig)


def sys_tgkill(t: Task, tgid: int, tid: int, sig: int, *_: int) -> int:
    if s32(tgid) <= 0:
        return E.INVAL
    return _thread_kill(t, s32(tgid), s32(tid), sig)


def sys_rt_sigqueueinfo(t: Task, pid: int, sig: int, uinfo: int, *_: int) -> int:
    pid, sig = s32(pid), s32(sig)
    if not 1 <= sig <= NSIG:
        return E.INVAL
    raw = t.mem.read(uinfo, 128)
    code = struct.unpack_from("<i", raw, 8)[0]
    if code >= 0 and pid != t.process.pid:
        return E.PERM                          # only negative codes may be forged
    off = 16 if t.is64 else 12
    value = struct.unpack_from("<Q" if t.is64 else "<I", raw, off + 8)[0]
    target = t.kernel.processes.get(pid)
    if target is None:
        return E.SRCH
    send(t.kernel, target, None, SigInfo(sig, code if code < 0 else SI_QUEUE,
                                         pid=t.process.pid, value=value, kind="rt"),
         current=t.thread)
    return EXIT if _died(t) else 0


# -- waiting ------------------------------------------------------------------------------
def sys_pause(t: Task, *_: int) -> int:
    sched = t.kernel.sched
    with sched.cond:
        sched.block(t.thread, None, 0, restart=ERESTARTNOHAND)
    return BLOCK


def sys_rt_sigsuspend(t: Task, ptr: int, size: int, *_: int) -> int:
    return _sigsuspend(t, _sigset(t, ptr, size))


def sys_sigsuspend(t: Task, _unused1: int, _unused2: int, mask: int, *_: int) -> int:
    """i386 sigsuspend: the (32-bit) mask is the third argument, by value."""
    return _sigsuspend(t, mask & 0xFFFFFFFF)


def _sigsuspend(t: Task, mask: int) -> int:
    sched = t.kernel.sched
    ts = t.thread.sig
    with sched.cond:
        if ts.saved_mask is None:
            ts.saved_mask = ts.blocked
        ts.blocked = mask & ~UNBLOCKABLE
        refresh(t.thread)
        sched.block(t.thread, None, 0, restart=ERESTARTNOHAND)
    return BLOCK


def do_rt_sigtimedwait(t: Task, setp: int, info: int, timeout: int, size: int,
                       fmt: str) -> int:
    wanted = _sigset(t, setp, size) & ~UNBLOCKABLE
    deadline = None
    if timeout:
        seconds = read_timespec(t.mem, timeout, fmt)
        deadline = time.monotonic() + seconds
    sched = t.kernel.sched
    with sched.cond:
        got = take(t.thread, wanted)
        if got is None and deadline is not None and seconds <= 0:
            return E.AGAIN
        if got is None:
            t.thread.sig.waiting = wanted
            sched.block(t.thread, deadline, E.AGAIN, restart=ERESTARTNOHAND)
            return BLOCK
    sig, siginfo = got
    if info:
        t.mem.write(info, siginfo.pack(t.is64))
    return sig


# -- interval timers ---------------------------------------------------------------------
_ITIMER_SIGNALS = {0: SIGALRM, 1: SIGVTALRM, 2: SIGPROF}


def _itimer(t: Task, which: int) -> Timer:
    ps = t.process.signals
    timer = ps.itimers.get(which)
    if timer is None:
        timer = Timer(t.kernel, t.process, _ITIMER_SIGNALS[which], "itimer")
        ps.itimers[which] = timer
    timer.kernel = t.kernel
    return timer


def _timeval_pair(seconds: float, interval: float) -> tuple[int, int, int, int]:
    def split(v: float) -> tuple[int, int]:
        us = int(round(v * 1e6))
        return us // 1_000_000, us % 1_000_000
    return (*split(interval), *split(seconds))


def sys_alarm(t: Task, seconds: int, *_: int) -> int:
    seconds &= 0xFFFFFFFF
    with t.kernel.sched.cond:
        timer = _itimer(t, 0)
        left = timer.remaining(time.monotonic())
        timer.arm(float(seconds), 0.0)
    whole = int(left)
    return whole + 1 if (left and not whole) or left - whole >= 0.5 else whole


def sys_getitimer(t: Task, which: int, ptr: int, *_: int) -> int:
    if which not in _ITIMER_SIGNALS:
        return E.INVAL
    with t.kernel.sched.cond:
        timer = _itimer(t, which)
        values = _timeval_pair(timer.remaining(time.monotonic()), timer.interval)
    t.mem.write(ptr, struct.pack("<" + t.abi.ts_fmt[1] * 4, *values))
    return 0


def sys_setitimer(t: Task, which: int, new: int, old: int, *_: int) -> int:
    if which not in _ITIMER_SIGNALS:
        return E.INVAL
    fmt = "<" + t.abi.ts_fmt[1] * 4
    value = interval = 0.0
    if new:
        isec, iusec, vsec, vusec = struct.unpack(fmt, t.mem.read(new, struct.calcsize(fmt)))
        if min(isec, iusec, vsec, vusec) < 0 or max(iusec, vusec) >= 1_000_000:
            return E.INVAL
        interval, value = isec + iusec / 1e6, vsec + vusec / 1e6
    with t.kernel.sched.cond:
        timer = _itimer(t, which)
        previous = _timeval_pair(timer.remaining(time.monotonic()), timer.interval)
        if old:
            t.mem.write(old, struct.pack(fmt, *previous))
        timer.arm(value, interval)
    return 0


# -- POSIX timers -------------------------------------------------------------------------
def sys_timer_create(t: Task, clock: int, sevp: int, idp: int, *_: int) -> int:
    clock = s32(clock)
    if clock not in _TIMER_CLOCKS:
        return E.INVAL
    ps = t.process.signals
    notify, signo, value, tid = SIGEV_SIGNAL, SIGALRM, None, 0
    if sevp:
        layout = "<Qiii" if t.is64 else "<Iiii"
        value, signo, notify, tid = struct.unpack(layout, t.mem.read(sevp, 20 if t.is64 else 16))
    if notify not in (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID):
        return E.INVAL
    if notify != SIGEV_NONE and not 1 <= signo <= NSIG:
        return E.INVAL
    with t.kernel.sched.cond:
        if notify == SIGEV_THREAD_ID:
            target = t.kernel.sched.threads.get(tid)
            if target is None or target.process is not t.process:
                return E.INVAL
        if len(ps.timers) >= MAX_TIMERS:
            return E.AGAIN
        timerid = next(i for i in range(MAX_TIMERS + 1) if i not in ps.timers)
        t.mem.put_u32(idp, timerid)
        ps.timers[timerid] = Timer(t.kernel, t.process, signo, "posix", timerid,
                                   timerid if value is None else value, tid, notify, clock)
    return 0


def _posix_timer(t: Task, timerid: int) -> Timer:
    timer = t.process.signals.timers.get(s32(timerid))
    if timer is None:
        raise OSError(22, "no such timer")
    timer.kernel = t.kernel
    return timer


def _itimerspec(timer: Timer, fmt: str) -> bytes:
    left, interval = timer.remaining(time.monotonic()), timer.interval
    ns = int(round(left * 1e9)), int(round(interval * 1e9))
    return struct.pack(fmt, ns[1] // 10**9, ns[1] % 10**9) + struct.pack(fmt, ns[0] // 10**9,
                                                                          ns[0] % 10**9)


def do_timer_settime(t: Task, timerid: int, flags: int, new: int, old: int, fmt: str) -> int:
    size = struct.calcsize(fmt)
    interval = read_timespec(t.mem, new, fmt)
    value = read_timespec(t.mem, new + size, fmt)
    with t.kernel.sched.cond:
        timer = _posix_timer(t, timerid)
        if old:
            t.mem.write(old, _itimerspec(timer, fmt))
        if flags & 1 and value > 0:                      # TIMER_ABSTIME
            now = time.time() if timer.clock == 0 else \
                time.monotonic() + t.kernel.mono_offset_ns / 1e9
            value = max(value - now, 1e-9)
        timer.arm(value, interval)
    return 0


def do_timer_gettime(t: Task, timerid: int, ptr: int, fmt: str) -> int:
    with t.kernel.sched.cond:
        data = _itimerspec(_posix_timer(t, timerid), fmt)
    t.mem.write(ptr, data)
    return 0


def sys_timer_getoverrun(t: Task, timerid: int, *_: int) -> int:
    with t.kernel.sched.cond:
        return min(_posix_timer(t, timerid).last_overrun, 0x7FFFFFFF)


def sys_timer_delete(t: Task, timerid: int, *_: int) -> int:
    with t.kernel.sched.cond:
        timer = _posix_timer(t, timerid)
        timer.deadline = None
        del t.process.signals.timers[timer.timerid]
    return 0


__all__ = ["sys_rt_sigaction", "sys_rt_sigprocmask", "sys_rt_sigpending", "sys_sigaltstack",
           "sys_rt_sigreturn", "sys_sigreturn", "sys_kill", "sys_tkill", "sys_tgkill",
           "sys_rt_sigqueueinfo", "sys_pause", "sys_rt_sigsuspend", "do_rt_sigtimedwait",
           "sys_alarm", "sys_getitimer", "sys_setitimer", "sys_timer_create",
           "do_timer_settime", "do_timer_gettime", "sys_timer_getoverrun", "sys_timer_delete",
           "SIG_DFL"]


# -- per-format entry points for the tables ------------------------------------------------
def rt_sigtimedwait(fmt: str) -> Handler:
    def handler(t: Task, setp: int, info: int, timeout: int, size: int, *_: int) -> int:
        return do_rt_sigtimedwait(t, setp, info, timeout, size, fmt)
    return handler


def timer_settime(fmt: str) -> Handler:
    def handler(t: Task, timerid: int, flags: int, new: int, old: int, *_: int) -> int:
        return do_timer_settime(t, timerid, flags, new, old, fmt)
    return handler


def timer_gettime(fmt: str) -> Handler:
    def handler(t: Task, timerid: int, ptr: int, *_: int) -> int:
        return do_timer_gettime(t, timerid, ptr, fmt)
    return handler
