"""Signals as Linux delivers them: actions, masks, pending sets, delivery, timers.

State: a process's ``SignalActions`` (its 64 actions, the process-wide pending set, its
interval and POSIX timers, whether it is stopped) and each thread's ``ThreadSignals``
(blocked mask, thread pending set, alternate stack, what its interrupted wait needs).

Everything here runs under the scheduler's condition (an RLock): senders queue a signal
and make the thread that will take it notice (wake it from a wait with its restart code,
kick its vCPU, or just mark it). The thread itself delivers, from its vCPU outside
emulation (``deliver``): it dequeues, takes the default action or writes a signal frame
(sigframe.py) and enters the handler; ``(rt_)sigreturn`` comes back through ``deliver``
too. ``GuestThread.sig_dirty`` is the one flag a syscall return tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .gdt import RT_SIGRETURN32_OFFSET, SIGRETURN32_OFFSET
from .memory import GuestFault
from .sigframe import (
    REDZONE,
    SS_DISABLE,
    SS_ONSTACK,
    FrameSpec,
    SigInfo,
    pack_fxsave,
    read_frame,
    sanitize_flags,
    write_frame,
)

if TYPE_CHECKING:
    from .machine import Machine
    from .process import Process
    from .task import Task
    from .threads import GuestThread

__all__ = ["SignalActions", "ThreadSignals", "Action", "Timer", "SigInfo", "send",
           "deliver", "fault_signal", "signal_name", "NSIG", "SIG_DFL", "SIG_IGN", "bit",
           "ERESTARTSYS", "ERESTARTNOINTR", "ERESTARTNOHAND", "ERESTART_RESTARTBLOCK",
           "UNBLOCKABLE", "wakes_wait", "refresh", "take", "terminate", "deliverable",
           "default_action", "init_discards", "SS_AUTODISARM", "SI_USER", "SI_KERNEL",
           "SI_QUEUE", "SI_TIMER", "SI_TKILL", "SA_NOCLDSTOP", "CLD_STOPPED", "CLD_CONTINUED"]

NSIG = 64
SIG_DFL, SIG_IGN = 0, 1
SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE = 1, 2, 3, 4, 5, 6, 7, 8
SIGKILL, SIGSEGV, SIGPIPE, SIGALRM, SIGCHLD, SIGCONT, SIGSTOP = 9, 11, 13, 14, 17, 18, 19
SIGTSTP, SIGTTIN, SIGTTOU, SIGVTALRM, SIGPROF = 20, 21, 22, 26, 27
SA_NOCLDSTOP, SA_SIGINFO, SA_RESTORER, SA_ONSTACK = 0x1, 0x4, 0x04000000, 0x08000000
SA_RESTART, SA_NODEFER, SA_RESETHAND = 0x10000000, 0x40000000, 0x80000000
SS_AUTODISARM = 1 << 31
SI_USER, SI_KERNEL, SI_QUEUE, SI_TIMER, SI_TKILL = 0, 0x80, -1, -2, -6
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = -512, -513, -514, -516
RESTART_CODES = (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK)
EINTR = -4
CLD_STOPPED, CLD_CONTINUED = 5, 6
MAX_QUEUED = 1024                  # queued real-time signals per process (RLIMIT_SIGPENDING)
MAX_NESTED = 64                    # frames built in one delivery

_NAMES = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
          7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
          13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD",
          18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU",
          23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF",
          28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS"}
_IGNORE = {SIGCHLD, SIGCONT, 23, 28}
_STOP = {SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU}
_CORE = {SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, 24, 25, 31}
_SYNC = (SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE, 31)     # dequeued first (Linux too)


def bit(sig: int) -> int:
    return 1 << (sig - 1)


UNBLOCKABLE = bit(SIGKILL) | bit(SIGSTOP)
_STOP_MASK = sum(bit(s) for s in _STOP)


def signal_name(sig: int) -> str:
    if sig in _NAMES:
        return _NAMES[sig]
    return f"SIGRTMIN+{sig - 32}" if 32 <= sig <= NSIG else f"signal {sig}"


def default_action(sig: int) -> str:
    """terminate, core, ignore or stop (SIGCONT's "continue" happens when it is sent)."""
    if sig in _IGNORE:
        return "ignore"
    if sig in _STOP:
        return "stop"
    return "core" if sig in _CORE else "terminate"


@dataclass
class Action:
    """One signal's disposition (struct k_sigaction)."""

    handler: int = SIG_DFL
    flags: int = 0
    mask: int = 0
    restorer: int = 0


def _pending_mask(pending: dict[int, list[SigInfo]]) -> int:
    mask = 0
    for sig in pending:
        mask |= bit(sig)
    return mask


def _save_pending(pending: dict[int, list[SigInfo]]) -> list[list[Any]]:
    return [[sig, [i.save() for i in infos]] for sig, infos in pending.items()]


def _load_pending(data: Iterable[list[Any]]) -> dict[int, list[SigInfo]]:
    out: dict[int, list[SigInfo]] = {}
    for sig, infos in data:
        if 1 <= int(sig) <= NSIG and infos:
            out[int(sig)] = [SigInfo.restore(i) for i in infos][:MAX_QUEUED]
    return out


class Timer:
    """An armed interval timer (alarm/setitimer) or POSIX timer; the scheduler calls
    ``fire`` at ``deadline`` (under its condition; a pause shifts ``deadline``)."""

    def __init__(self, kernel: Machine | None, process: Process, signo: int, kind: str,
                 timerid: int = 0, value: int = 0, tid: int = 0, notify: int = 0,
                 clock: int = 1) -> None:
        self.kernel = kernel
        self.process = process
        self.signo = signo
        self.kind = kind              # "itimer" (alarm/setitimer) or "posix"
        self.timerid = timerid
        self.value = value            # sigev_value
        self.tid = tid                # SIGEV_THREAD_ID target
        self.notify = notify          # SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4
        self.clock = clock
        self.deadline: float | None = None
        self.interval = 0.0
        self.overrun = 0
        self.last_overrun = 0         # of the last signal dequeued (timer_getoverrun)
        self.queued = False

    def arm(self, value: float, interval: float) -> None:
        """Caller holds the scheduler's condition. ``value`` 0 disarms."""
        self.interval = max(interval, 0.0)
        if value <= 0:
            self.deadline = None
            return
        self.deadline = time.monotonic() + value
        if self.kernel is not None:
            self.kernel.sched.add_alarm(self)

    def remaining(self, now: float) -> float:
        return 0.0 if self.deadline is None else max(self.deadline - now, 1e-9)

    def fire(self, now: float) -> None:
        if self.deadline is None or self.kernel is None:
            return
        if self.interval > 0:
            missed = int((now - self.deadline) / self.interval)
            self.overrun += missed
            self.deadline += (missed + 1) * self.interval
            self.kernel.sched.add_alarm(self)
        else:
            self.deadline = None
        if self.notify == 1:                       # SIGEV_NONE
            return
        target = None
        if self.notify & 4:
            target = self.kernel.sched.threads.get(self.tid)
            if target is None or target.process is not self.process:
                return
        if self.kind == "itimer":
            send(self.kernel, self.process, target, SigInfo(self.signo, SI_KERNEL))
            return
        if self.queued:
            self.overrun += 1
            return
        info = SigInfo(self.signo, SI_TIMER, timerid=self.timerid, value=self.value,
                       kind="timer")
        self.queued = send(self.kernel, self.process, target, info)

    def save(self, now: float) -> dict[str, Any]:
        return {"signo": self.signo, "kind": self.kind, "timerid": self.timerid,
                "value": self.value, "tid": self.tid, "notify": self.notify,
                "clock": self.clock, "left": None if self.deadline is None
                else max(self.deadline - now, 0.0), "interval": self.interval,
                "overrun": self.overrun, "queued": self.queued}

    @classmethod
    def restore(cls, process: Process, data: dict[str, Any]) -> Timer:
        timer = cls(None, process, int(data["signo"]), str(data["kind"]), int(data["timerid"]),
                    int(data["value"]), int(data["tid"]), int(data["notify"]),
                    int(data["clock"]))
        timer.interval = float(data["interval"])
        timer.overrun, timer.queued = int(data["overrun"]), bool(data["queued"])
        left = data["left"]
        timer.deadline = None if left is None else float(left)   # relative until started
        return timer


@dataclass(eq=False)
class SignalActions:
    """What a process's threads share: actions, the process-wide pending set, timers."""

    actions: list[Action] = field(default_factory=lambda: [Action() for _ in range(NSIG + 1)])
    pending: dict[int, list[SigInfo]] = field(default_factory=dict)
    itimers: dict[int, Timer] = field(default_factory=dict)     # ITIMER_REAL/VIRTUAL/PROF
    timers: dict[int, Timer] = field(default_factory=dict)      # timer_create ids
    stopped: bool = False
    #: for the parent's wait: the signal that stopped it, until reported (0: nothing)...
    stop_report: int = 0
    #: ...and whether a SIGCONT continued it since, until reported (WCONTINUED)
    cont_report: bool = False
    _restored_timers: bool = False

    def ignored(self, sig: int) -> bool:
        handler = self.actions[sig].handler
        return handler == SIG_IGN or (handler == SIG_DFL and default_action(sig) == "ignore")

    def fork_copy(self) -> SignalActions:
        """A forked child's: the same actions; nothing pending, no timers (as Linux)."""
        return SignalActions(actions=[Action(a.handler, a.flags, a.mask, a.restorer)
                                      for a in self.actions])

    def reset_on_exec(self) -> None:
        """execve: caught signals go back to their default action; ignored ones stay
        ignored; pending signals and alarm/setitimer timers stay; POSIX timers go."""
        for i, action in enumerate(self.actions):
            if action.handler != SIG_IGN:
                self.actions[i] = Action()
        for timer in self.timers.values():
            timer.deadline = None
        self.timers.clear()

    def save(self, now: float) -> dict[str, Any]:
        return {"actions": [[i, a.handler, a.flags, a.mask, a.restorer]
                            for i, a in enumerate(self.actions) if a != Action()],
                "pending": _save_pending(self.pending), "stopped": self.stopped,
                "stop_report": self.stop_report, "cont_report": self.cont_report,
                "itimers": [[w, t.save(now)] for w, t in self.itimers.items()
                            if t.deadline is not None],
                "timers": [t.save(now) for t in self.timers.values()]}

    def restore(self, data: dict[str, Any], process: Process | None = None,
                kernel: Machine | None = None) -> None:
        """Load ``save()``'s dict; with ``kernel``, armed timers start counting again."""
        self.actions = [Action() for _ in range(NSIG + 1)]
        for i, handler, flags, mask, restorer in data.get("actions", []):
            if 1 <= int(i) <= NSIG:
                self.actions[int(i)] = Action(int(handler), int(flags), int(mask),
                                              int(restorer))
        self.pending = _load_pending(data.get("pending", []))
        self.stopped = bool(data.get("stopped", False))
        self.stop_report = int(data.get("stop_report", 0))
        self.cont_report = bool(data.get("cont_report", False))
        if process is None:
            return
        self.itimers = {int(w): Timer.restore(process, t) for w, t in data.get("itimers", [])}
        self.timers = {int(t["timerid"]): Timer.restore(process, t)
                       for t in data.get("timers", [])}
        if kernel is not None:
            now = time.monotonic()
            with kernel.sched.cond:
                for timer in (*self.itimers.values(), *self.timers.values()):
                    timer.kernel = kernel
                    if timer.deadline is not None:
                        timer.deadline = now + timer.deadline
                        kernel.sched.add_alarm(timer)


@dataclass(eq=False)
class ThreadSignals:
    """One thread's: blocked mask, private pending set, alternate stack, wait bookkeeping."""

    blocked: int = 0
    pending: dict[int, list[SigInfo]] = field(default_factory=dict)
    altstack: tuple[int, int, int] = (0, SS_DISABLE, 0)      # ss_sp, ss_flags, ss_size
    #: the mask to restore once a signal is delivered or the call returns, while
    #: rt_sigsuspend, ppoll, pselect6 or epoll_pwait has its own mask in place
    saved_mask: int | None = None
    waiting: int = 0                    # rt_sigtimedwait's set while it waits
    interrupted: int = 0                # the restart code a signal woke its wait with
    syscall_nr: int = -1                # the syscall it blocked in (restart)
    wait_left: float = 0.0              # the interrupted wait's remaining timeout
    rem: tuple[int, str] | None = None  # nanosleep's rem pointer and timespec format
    sigreturn: str | None = None        # "rt"/"classic": restore from the frame at resume
    parked: bool = False                # stopped by SIGSTOP & co. until SIGCONT
    trap: tuple[int, int, int, int] | None = None   # sig, trapno, err, cr2 of a fault

    def fork_copy(self) -> ThreadSignals:
        """The child's thread after fork: same mask and alternate stack, nothing pending."""
        return ThreadSignals(blocked=self.blocked, altstack=self.altstack)

    def clone_thread(self) -> ThreadSignals:
        """A new thread (clone): the creator's mask; no alternate stack (as Linux)."""
        return ThreadSignals(blocked=self.blocked)

    def reset_on_exec(self) -> None:
        self.altstack = (0, SS_DISABLE, 0)
        self.saved_mask = None
        self.waiting = 0

    def save(self) -> dict[str, Any]:
        return {"blocked": self.blocked, "pending": _save_pending(self.pending),
                "altstack": list(self.altstack), "saved_mask": self.saved_mask,
                "waiting": self.waiting, "interrupted": self.interrupted,
                "syscall_nr": self.syscall_nr, "wait_left": self.wait_left,
                "rem": None if self.rem is None else list(self.rem),
                "sigreturn": self.sigreturn, "parked": self.parked,
                "trap": None if self.trap is None else list(self.trap)}

    def restore(self, data: dict[str, Any]) -> None:
        self.blocked = int(data.get("blocked", 0)) & ~UNBLOCKABLE
        self.pending = _load_pending(data.get("pending", []))
        sp, flags, size = data.get("altstack", [0, SS_DISABLE, 0])
        self.altstack = (int(sp), int(flags), int(size))
        saved = data.get("saved_mask")
        self.saved_mask = None if saved is None else int(saved)
        self.waiting = int(data.get("waiting", 0))
        self.interrupted = int(data.get("interrupted", 0))
        self.syscall_nr = int(data.get("syscall_nr", -1))
        self.wait_left = float(data.get("wait_left", 0.0))
        rem = data.get("rem")
        self.rem = None if rem is None else (int(rem[0]), str(rem[1]))
        ret = data.get("sigreturn")
        self.sigreturn = None if ret is None else str(ret)
        self.parked = bool(data.get("parked", False))
        trap = data.get("trap")
        self.trap = None if trap is None else (int(trap[0]), int(trap[1]), int(trap[2]),
                                               int(trap[3]))


# -- who takes a signal -------------------------------------------------------------
def _threads_of(kernel: Machine, process: Process) -> list[GuestThread]:
    return [th for th in kernel.sched.threads.values() if th.process is process]


def deliverable(thread: GuestThread) -> int:
    """Caller holds the condition: signals ``thread`` would take now."""
    ts = thread.sig
    return (_pending_mask(ts.pending) | _pending_mask(thread.process.signals.pending)) \
        & ~ts.blocked


def refresh(thread: GuestThread) -> None:
    """Caller holds the condition: recompute ``sig_dirty`` after a mask or queue change."""
    ts = thread.sig
    thread.sig_dirty = bool(deliverable(thread) or ts.sigreturn or ts.trap
                            or ts.saved_mask is not None or thread.process.signals.stopped)


def wakes_wait(thread: GuestThread) -> bool:
    """Caller holds the condition: whether a pending signal ends the wait ``thread`` is
    starting (the scheduler asks when it blocks, so a signal that came first is seen)."""
    ts = thread.sig
    pending = _pending_mask(ts.pending) | _pending_mask(thread.process.signals.pending)
    return bool(pending & (~ts.blocked | ts.waiting)) and not ts.parked


def _notify(kernel: Machine, thread: GuestThread, sig: int, current: GuestThread | None) -> None:
    """Make ``thread`` notice ``sig`` soon: end its wait, or stop its vCPU."""
    from .threads import BLOCKED

    ts = thread.sig
    thread.sig_dirty = True
    if thread.state == BLOCKED:
        if ts.parked:
            return
        if ts.waiting & bit(sig):
            kernel.sched.interrupt(thread, ERESTARTNOINTR)    # sigtimedwait takes it
        elif not ts.blocked & bit(sig):
            moved = None
            if thread.intr_result is not None:
                from .waitq import interrupted_result

                # a blocking write that already moved bytes returns that count (Linux's
                # pipe and stream writes), with or without SA_RESTART: no EINTR, no retry
                moved = interrupted_result(thread)
            kernel.sched.interrupt(thread, moved)
    elif thread.on_cpu and thread is not current:
        kernel.kick_thread(thread)


def _pick(kernel: Machine, process: Process, sig: int) -> GuestThread | None:
    """The thread a process-directed signal goes to: one waiting for it in sigtimedwait,
    else the main thread or the first that does not block it."""
    threads = sorted(_threads_of(kernel, process), key=lambda th: th.tid)
    for th in threads:
        if th.sig.waiting & bit(sig):
            return th
    for th in threads:
        if not th.sig.blocked & bit(sig):
            return th
    return None


def init_discards(process: Process, sig: int, external: bool = False) -> bool:
    """pid 1 is the partition's init, as a container's pid 1 is its pid namespace's: a
    signal it has no handler for (SIG_DFL) is discarded, SIGKILL and SIGSTOP included,
    unless it comes from outside the partition (``external``: the runtime's Shut Down or
    OOM kill, as from an ancestor namespace), which still delivers SIGKILL and SIGSTOP.
    CPU faults do not come through here: they still kill pid 1 (fault_signal)."""
    if process.pid != 1 or process.signals.actions[sig].handler != SIG_DFL:
        return False
    return not (external and sig in (SIGKILL, SIGSTOP))


def send(kernel: Machine, process: Process, thread: GuestThread | None, info: SigInfo,
         current: GuestThread | None = None, external: bool = False) -> bool:
    """Generate a signal for ``process`` (``thread`` None) or one of its threads; ``current``
    is the sending thread (it notices at its syscall return); ``external``: sent from
    outside the partition (init_discards). True if it was queued."""
    sig = info.signo
    if not 1 <= sig <= NSIG or process.exit_status is not None:
        return False
    sched = kernel.sched
    with sched.cond:
        ps = process.signals
        threads = _threads_of(kernel, process)
        if sig == SIGKILL:
            if init_discards(process, sig, external):
                return False
            terminate(kernel, process, SIGKILL, False)
            return True
        if sig == SIGCONT:
            _continue(kernel, process)
        elif sig in _STOP:
            for queue in [ps.pending, *(th.sig.pending for th in threads)]:
                queue.pop(SIGCONT, None)
        if thread is not None:
            blocked = bool(thread.sig.blocked & bit(sig))
        else:
            blocked = bool(threads) and all(th.sig.blocked & bit(sig) for th in threads)
        if not blocked and (ps.ignored(sig) or init_discards(process, sig, external)):
            return False                  # a blocked one waits: its action may change
        queue = thread.sig.pending if thread is not None else ps.pending
        infos = queue.get(sig, [])
        if infos and (sig < 32 or sum(len(q) for q in ps.pending.values()) >= MAX_QUEUED):
            return False                          # standard signals do not queue
        queue[sig] = [*infos, info]
        target = thread
        if thread is None:
            target = _pick(kernel, process, sig)
            for th in threads:
                th.sig_dirty = True
        if target is not None:
            _notify(kernel, target, sig, current)
        return True


def _continue(kernel: Machine, process: Process) -> None:
    """SIGCONT: drop pending stop signals; resume a stopped process's threads (its parent
    can then see it continued: WCONTINUED, SIGCHLD with CLD_CONTINUED)."""
    ps = process.signals
    for queue in [ps.pending, *(th.sig.pending for th in _threads_of(kernel, process))]:
        for sig in _STOP:
            queue.pop(sig, None)
    if not ps.stopped:
        return
    ps.stopped = False
    ps.stop_report, ps.cont_report = 0, True     # a stop not yet waited for is lost
    for th in _threads_of(kernel, process):
        if th.sig.parked:
            th.sig.parked = False
            kernel.sched.wake(th, None)
        refresh(th)
    _job_changed(kernel, process, CLD_CONTINUED, SIGCONT)


def _stop(kernel: Machine, process: Process, current: GuestThread, sig: int) -> None:
    """The default action of stop signal ``sig``: every thread of ``process`` parks at its
    next delivery; its parent can see it stopped (WUNTRACED, SIGCHLD with CLD_STOPPED)."""
    ps = process.signals
    if ps.stopped:
        return
    ps.stopped = True
    ps.stop_report, ps.cont_report = sig, False
    for th in _threads_of(kernel, process):
        th.sig_dirty = True
        if th.on_cpu and th is not current:
            kernel.kick_thread(th)
    _job_changed(kernel, process, CLD_STOPPED, sig)


def _job_changed(kernel: Machine, process: Process, code: int, sig: int) -> None:
    """Tell the process table (its parent's waiters, SIGCHLD) that ``process`` stopped or
    continued."""
    hook = getattr(getattr(kernel, "procs", None), "job_changed", None)
    if hook is not None:
        hook(process, code, sig)


def _park(thread: GuestThread) -> None:
    """Caller holds the condition: the thread stays off the CPUs until SIGCONT."""
    from .threads import BLOCKED

    thread.sig.parked = True
    thread.state = BLOCKED
    thread.token += 1


def terminate(kernel: Machine, process: Process, sig: int, core: bool, detail: str = "") -> None:
    """The process dies of ``sig`` (the process table's exit; pid 1 ends the partition:
    with 128+N, or Failed naming the signal when its default action dumps core)."""
    name = signal_name(sig)
    if process.pid == 1:
        kernel.event("GuestSignal", f"pid 1 received {name}; terminating")
    reason = f"killed by {name}{detail}" if core else None
    kernel.procs.exit_process(process, sig | (0x80 if core else 0), reason=reason)


# -- delivery -----------------------------------------------------------------------
def take(thread: GuestThread, wanted: int) -> tuple[int, SigInfo] | None:
    """Caller holds the condition: dequeue a pending signal of ``wanted`` (sigtimedwait)."""
    return _dequeue(thread, wanted)


def _dequeue(thread: GuestThread, wanted: int | None = None) -> tuple[int, SigInfo] | None:
    """Caller holds the condition: the next signal to deliver (faults first, then the
    thread's own, then the process's; lowest number first), removed from its queue;
    ``wanted``: from that set whether blocked or not."""
    ts = thread.sig
    ps = thread.process.signals
    for queue in (ts.pending, ps.pending):
        ready = _pending_mask(queue) & (~ts.blocked if wanted is None else wanted)
        if wanted is None and ts.trap is not None and queue is ts.pending and ts.trap[0] in queue:
            ready = bit(ts.trap[0])
        if not ready:
            continue
        sig = next((s for s in _SYNC if ready & bit(s)), 0) or (ready & -ready).bit_length()
        infos = queue[sig]
        info = infos.pop(0)
        if not infos:
            del queue[sig]
        if info.kind == "timer":
            timer = ps.timers.get(info.timerid)
            if timer is not None:
                info.overrun, timer.overrun, timer.queued = timer.overrun, 0, False
                timer.last_overrun = info.overrun
        return sig, info
    return None


def _restart(t: Task, regs: dict[str, int], code: int, handler: bool, flags: int) -> None:
    """An interrupted wait: make the syscall return EINTR, or run it again."""
    ts = t.thread.sig
    pc, ax = ("rip", "rax") if t.is64 else ("eip", "eax")
    if code not in RESTART_CODES:           # a plain error (epoll_wait's EINTR): returned
        ts.rem = None
        return
    if handler and (code in (ERESTARTNOHAND, ERESTART_RESTARTBLOCK)
                    or (code == ERESTARTSYS and not flags & SA_RESTART)):
        regs[ax] = EINTR
        if code == ERESTART_RESTARTBLOCK and ts.rem is not None:
            ptr, fmt = ts.rem
            left = int(ts.wait_left * 1e9)
            from .abi import write_timespec

            try:
                write_timespec(t.mem, ptr, fmt, left)
            except (GuestFault, OSError):
                pass
    elif ts.syscall_nr >= 0:
        regs[ax] = ts.syscall_nr
        regs[pc] -= 2                        # `syscall` and `int 0x80` are 2 bytes
    ts.rem = None


def _on_altstack(ts: ThreadSignals, sp: int) -> bool:
    ss_sp, _, ss_size = ts.altstack
    return ss_size > 0 and ss_sp < sp <= ss_sp + ss_size


def _init_fpu(t: Task) -> None:
    """A handler starts with the FPU as execve leaves it (Linux clears it too)."""
    t.set_fpu(pack_fxsave(0x37F, 0, 0xFFFF, [(0, 0)] * 8, 0x1F80, [0] * (16 if t.is64 else 8)))


def _setup_frame(t: Task, sig: int, info: SigInfo, action: Action,
                 regs: dict[str, int]) -> bool:
    """Build the frame and enter the handler; False (after killing) on a bad stack."""
    thread = t.thread
    ts = thread.sig
    is64 = t.is64
    sp = regs["rsp" if is64 else "esp"]
    ss_sp, ss_flags, ss_size = ts.altstack
    onstack = _on_altstack(ts, sp)
    frame_stack = (ss_sp, SS_ONSTACK if onstack else (ss_flags & ~SS_AUTODISARM), ss_size)
    if is64:
        sp -= REDZONE
    if (action.flags & SA_ONSTACK and ss_size and not ss_flags & SS_DISABLE
            and not onstack):
        sp = ss_sp + ss_size
        if ss_flags & SS_AUTODISARM:
            ts.altstack = (0, SS_DISABLE, 0)
    trap = (0, 0, 0)
    if ts.trap is not None and ts.trap[0] == sig and info.kind == "fault":
        trap = ts.trap[1:]
        ts.trap = None
    rt = is64 or bool(action.flags & SA_SIGINFO)
    mask = ts.saved_mask if ts.saved_mask is not None else ts.blocked
    if action.flags & SA_RESTORER:
        restorer = action.restorer
    else:       # i386: the boot page's trampoline, as Linux's vDSO (x86_64 refuses below)
        restorer = t.mem.boot + (RT_SIGRETURN32_OFFSET if rt else SIGRETURN32_OFFSET)
    spec = FrameSpec(sig, info, action.handler, restorer, rt, mask, frame_stack, trap)
    try:
        if is64 and not action.flags & SA_RESTORER:
            raise GuestFault("x86_64 signal handler without SA_RESTORER")
        new = write_frame(t.mem.write, sp, is64, regs, t.get_fpu(), spec)
    except (GuestFault, OSError) as exc:
        terminate(t.kernel, thread.process, SIGSEGV, True,
                  f" (cannot deliver {signal_name(sig)}: {exc})")
        return False
    flags_reg = "eflags"
    new[flags_reg] = regs[flags_reg] & ~(0x400 | 0x100 | 0x10000)   # DF, TF, RF cleared
    t.set_regs(new)
    _init_fpu(t)
    with t.kernel.sched.cond:
        ts.saved_mask = None
        ts.blocked |= action.mask | (0 if action.flags & SA_NODEFER else bit(sig))
        ts.blocked &= ~UNBLOCKABLE
        if action.flags & SA_RESETHAND:    # the handler only: flags and mask stay (Linux)
            thread.process.signals.actions[sig] = replace(action, handler=SIG_DFL)
    return True


def deliver(t: Task) -> None:
    """From the thread's vCPU, outside emulation: finish a sigreturn, then take every
    deliverable signal (default action or handler frame). May stop or end the thread."""
    thread = t.thread
    ts = thread.sig
    kernel = t.kernel
    sched = kernel.sched
    if ts.sigreturn is not None:
        _sigreturn(t)
    with sched.cond:
        code, ts.interrupted = ts.interrupted, 0
        if code:
            from .waitq import put_back

            put_back(thread)                   # what the wait changed (select's sets)
        elif ts.saved_mask is not None:
            # A call with a mask of its own (ppoll...) ended without a signal: it timed
            # out, or was woken to retry (it puts its mask back then). Signals are taken
            # with the thread's own mask again, as Linux restores it on return.
            ts.blocked, ts.saved_mask = ts.saved_mask, None
    regs: dict[str, int] | None = None
    for _ in range(MAX_NESTED):
        with sched.cond:
            if sched.done or thread.process.exit_status is not None:
                return
            if thread.process.signals.stopped:
                if code:
                    regs = regs or t.get_regs()
                    _restart(t, regs, code, False, 0)
                    t.set_regs(regs)
                _park(thread)
                return
            item = _dequeue(thread)
            if item is None:
                break
            sig, info = item
            action = thread.process.signals.actions[sig]
        if action.handler == SIG_IGN:
            continue
        if action.handler == SIG_DFL:
            what = default_action(sig)
            if what == "ignore":
                continue
            if thread.process.pid == 1 and sig != SIGSTOP and info.kind != "fault":
                continue                      # init: queued while blocked, still discarded
            if what == "stop":
                with sched.cond:
                    _stop(kernel, thread.process, thread, sig)
                continue                      # the next round parks this thread
            terminate(kernel, thread.process, sig, what == "core")
            return
        regs = t.get_regs()
        if code:
            _restart(t, regs, code, True, action.flags)
            code = 0
        if not _setup_frame(t, sig, info, action, regs):
            return
    if code:
        regs = t.get_regs()
        _restart(t, regs, code, False, 0)
        t.set_regs(regs)
    with sched.cond:
        if ts.saved_mask is not None:          # sigsuspend woke without a handler running
            ts.blocked, ts.saved_mask = ts.saved_mask, None
        refresh(thread)


# -- sigreturn ------------------------------------------------------------------------
_USER_CS64, _USER_CS32, _USER_DS = 0x33, 0x23, 0x2B
_TLS_SELECTORS = {0, _USER_DS, 0x33, 0x3B, 0x43}


def _sigreturn(t: Task) -> None:
    """Restore what the frame holds; the frame is the guest's to write: flags keep only
    user bits, segments only user selectors, the mask never blocks SIGKILL/SIGSTOP."""
    ts = t.thread.sig
    kind, ts.sigreturn = ts.sigreturn, None
    now = t.get_regs()
    is64 = t.is64
    try:
        got = read_frame(t.mem.read, now["rsp" if is64 else "esp"], is64, kind == "rt")
    except (GuestFault, OSError, ValueError) as exc:
        terminate(t.kernel, t.process, SIGSEGV, True, f" (bad signal frame: {exc})")
        return
    regs = dict(got.regs)
    regs["eflags"] = sanitize_flags(now["eflags"], regs["eflags"])
    if is64:
        regs["cs"], regs["ss"] = _USER_CS64, _USER_DS
        regs.pop("fs", None)
        regs.pop("gs", None)
    else:
        regs["cs"] = _USER_CS32
        for seg in ("ss", "ds", "es"):
            regs[seg] = _USER_DS
        for seg in ("fs", "gs"):
            if regs[seg] not in _TLS_SELECTORS:
                regs[seg] = 0
    t.set_regs(regs)
    if got.fpu is not None:
        t.set_fpu(got.fpu)
    else:
        _init_fpu(t)
    with t.kernel.sched.cond:
        ts.blocked = got.mask & ~UNBLOCKABLE & ((1 << NSIG) - 1)
        refresh(t.thread)


# -- synchronous faults -----------------------------------------------------------------
def fault_signal(t: Task, sig: int, code: int, addr: int, trapno: int = 0, err: int = 0,
                 cr2: int = 0) -> bool:
    """A CPU fault of the running thread: True when a handler will take it (queued, to
    be delivered before the thread runs on); False when it kills (caller reports)."""
    thread = t.thread
    with t.kernel.sched.cond:
        action = thread.process.signals.actions[sig]
        if action.handler in (SIG_DFL, SIG_IGN) or thread.sig.blocked & bit(sig):
            return False
        thread.sig.pending[sig] = [SigInfo(sig, code, addr=addr, kind="fault")]
        thread.sig.trap = (sig, trapno, err, cr2)
        thread.sig_dirty = True
    return True
