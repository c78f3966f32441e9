"""Guest threads and the scheduler that hands them to vCPUs.

A guest thread is either on a vCPU (``on_cpu``), queued to run, blocked (futex, sleep), or dead.
Blocking syscalls never block a vCPU's host thread: the syscall hook records the wait here and
stops emulation; the vCPU saves the thread's registers and takes another runnable thread.
Wake-ups may arrive before that save completes, so a woken thread is queued by whichever of
``wake`` and ``release`` comes second.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .registers import result_reg as result_reg_of
from .signals import ERESTARTSYS, ThreadSignals, wakes_wait

if TYPE_CHECKING:
    from .process import Process

__all__ = ["GuestThread", "Scheduler", "RUNNING", "RUNNABLE", "BLOCKED", "DEAD"]

RUNNING, RUNNABLE, BLOCKED, DEAD = "running", "runnable", "blocked", "dead"
ETIMEDOUT = 110
EAGAIN = 11
#: Guest threads of all processes of a partition together.
MAX_THREADS = 1024
#: pids and tids share one number space, as on Linux; numbers wrap below this.
PID_MAX = 32768
#: A wake-up result meaning "run the syscall again" (wait4 after a child changed state).
RESTART = 1 << 72


@dataclass(eq=False)
class GuestThread:
    """One guest thread: its saved CPU context and what it waits for."""

    tid: int
    process: Process
    context: Any = None                      # UcContext once it has run
    pending: dict[int, int] = field(default_factory=dict)   # registers to write on resume
    state: str = RUNNABLE
    on_cpu: bool = False
    clear_tid: int = 0
    gdt: int = 0                             # i386: guest address of its own GDT
    fresh: bool = True                       # has not run on any vCPU yet
    token: int = 0                           # bumps on each block; stale timers compare it
    futex_addr: int | None = None
    futex_bitset: int = 0xFFFFFFFF
    stdin_wait: tuple[int, int] | None = None     # (buf, count) while blocked reading stdin
    restart: dict[int, int] | None = None    # registers that re-issue the blocked syscall
    sig: ThreadSignals = field(default_factory=ThreadSignals)   # mask, pending (signals.py)
    sig_dirty: bool = False                  # a signal (or sigreturn) may need delivery
    intr_result: int | None = ERESTARTSYS    # a signal ends the wait with this (None: never)
    reset_context: bool = False              # execve: start from the boot page next time
    utime: float = 0.0                       # CPU seconds used (accounting.py)
    stime: float = 0.0

    @property
    def result_reg(self) -> int:
        """Where its syscalls' results go (its process's architecture)."""
        return result_reg_of(self.process.is64)


class Alarm(Protocol):
    """A process timer (signals.Timer): ``fire`` runs at ``deadline``, under ``cond``."""

    deadline: float | None

    def fire(self, now: float) -> None: ...


class Scheduler:
    """Run queue, futex wait queues and timers, all under one condition variable."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.runq: deque[GuestThread] = deque()
        self.threads: dict[int, GuestThread] = {}
        self.futexes: dict[int, list[GuestThread]] = {}
        self.timers: list[tuple[float, int, GuestThread, int, int]] = []
        self.alarms: list[tuple[float, int, Alarm]] = []     # signal timers (add_alarm)
        self._seq = itertools.count()
        self._next_id = 2                        # the next pid/tid to try (1 is init)
        self.taken_ids: Callable[[int], bool] = lambda _id: False   # zombie pids (proctable)
        self.done = False
        self.paused = False                      # take() hands out nothing, timers stand still
        self.paused_at = 0.0
        self.exit_code: int | None = None
        self.failed_reason: str | None = None
        self.on_done: Callable[[], None] = lambda: None

    # -- lifecycle ------------------------------------------------------------
    def alloc_id(self) -> int | None:
        """Caller holds ``cond``. The next free pid/tid (threads and zombies hold theirs)."""
        for _ in range(PID_MAX):
            candidate = self._next_id
            self._next_id = candidate + 1 if candidate + 1 < PID_MAX else 2
            if candidate not in self.threads and not self.taken_ids(candidate):
                return candidate
        return None

    def new_thread(self, process: Process, first: bool = False,
                   tid: int | None = None) -> GuestThread | None:
        """A thread of ``process``: tid 1 for the first, ``tid`` when given (a new process's
        main thread has its pid), else the next free number."""
        with self.cond:
            if len(self.threads) >= MAX_THREADS:
                return None
            if tid is None:
                tid = 1 if first else self.alloc_id()
                if tid is None:
                    return None
            thread = GuestThread(tid=tid, process=process)
            self.threads[tid] = thread
            return thread

    def start(self, thread: GuestThread) -> None:
        with self.cond:
            thread.state = RUNNABLE
            self.runq.append(thread)
            self.cond.notify_all()

    def finish(self, exit_code: int | None, failed_reason: str | None = None) -> None:
        """End the partition (first call wins)."""
        with self.cond:
            if self.done:
                return
            self.done = True
            self.exit_code = exit_code
            self.failed_reason = failed_reason
            self.cond.notify_all()
        self.on_done()

    def thread_exit(self, thread: GuestThread, code: int) -> None:
        """A thread ended; the partition ends with ``code`` when it was the last one."""
        with self.cond:
            thread.state = DEAD
            self.threads.pop(thread.tid, None)
            last = not self.threads
        if last:
            self.finish(code & 0xFF)

    # -- vCPU side ------------------------------------------------------------
    def take(self) -> GuestThread | None:
        """Block until a thread is runnable (None once the partition is done)."""
        with self.cond:
            while True:
                if self.done:
                    return None
                if self.paused:
                    self.cond.wait()
                    continue
                self._fire_timers()
                if self.runq:
                    thread = self.runq.popleft()
                    thread.state = RUNNING
                    thread.on_cpu = True
                    return thread
                deadline = self.next_deadline()
                wait = None if deadline is None else deadline - time.monotonic()
                self.cond.wait(timeout=None if wait is None else max(wait, 0.0005))

    def release(self, thread: GuestThread) -> None:
        """The vCPU saved ``thread``'s context; queue it again if it can run."""
        with self.cond:
            thread.on_cpu = False
            if thread.state == RUNNING:
                thread.state = RUNNABLE
            if thread.state == RUNNABLE:
                self.runq.append(thread)
                self.cond.notify_all()

    def has_waiting(self) -> bool:
        return bool(self.runq)

    # -- blocking -----------------------------------------------------------------
    def block(self, thread: GuestThread, deadline: float | None, timeout_result: int,
              restart: int | None = ERESTARTSYS) -> None:
        """Caller holds ``cond``. Mark ``thread`` blocked, optionally until ``deadline``.

        A signal the thread takes ends the wait early with ``restart`` (signals.py: Linux's
        -ERESTART* codes), None for a wait no signal ends (vfork's parent)."""
        thread.state = BLOCKED
        thread.token += 1
        thread.intr_result = restart
        if restart is not None and thread.sig_dirty and wakes_wait(thread):
            self.interrupt(thread)             # the signal came before the wait began
            return
        if deadline is not None:
            entry = (deadline, next(self._seq), thread, thread.token, timeout_result)
            heapq.heappush(self.timers, entry)
            if len(self.timers) > 2 * MAX_THREADS:
                self._drop_stale_timers()
            self.cond.notify_all()

    def _drop_stale_timers(self) -> None:
        """Timers of waits that ended early stay in the heap until their deadline; a guest
        that waits with long timeouts and is woken at once would grow it without end. Each
        thread has at most one live timer, so keeping only those bounds it."""
        self.timers = [e for e in self.timers if e[2].token == e[3] and e[2].state == BLOCKED]
        heapq.heapify(self.timers)

    def wake(self, thread: GuestThread, result: int | None) -> None:
        """Caller holds ``cond``. ``result`` None leaves the registers alone (SIGCONT)."""
        if thread.state != BLOCKED:
            return
        self._unwait(thread)
        if result == RESTART and thread.restart is not None:
            thread.pending.update(thread.restart)
        elif result is not None:
            thread.pending[thread.result_reg] = result
        thread.restart = None
        thread.sig.waiting = 0
        thread.state = RUNNABLE
        if not thread.on_cpu:
            self.runq.append(thread)
            self.cond.notify_all()

    def interrupt(self, thread: GuestThread, result: int | None = None) -> bool:
        """Caller holds ``cond``. A signal ends ``thread``'s wait: it resumes with its
        wait's restart code (or ``result``), which delivery turns into EINTR or a restart
        of the call. False if it is not in an interruptible wait."""
        if thread.state != BLOCKED or thread.sig.parked or thread.intr_result is None:
            return False
        code = thread.intr_result if result is None else result
        timer = self.live_timer(thread)
        thread.sig.wait_left = 0.0 if timer is None else max(timer[0] - time.monotonic(), 0.0)
        thread.sig.interrupted = code
        thread.sig.waiting = 0
        thread.sig_dirty = True
        self.wake(thread, code)
        return True

    def add_alarm(self, alarm: Alarm) -> None:
        """Caller holds ``cond``: call ``alarm.fire(now)`` at ``alarm.deadline``. Entries
        whose alarm has since been re-armed or cancelled are skipped when they come due."""
        if alarm.deadline is None:
            return
        heapq.heappush(self.alarms, (alarm.deadline, next(self._seq), alarm))
        if len(self.alarms) > 4 * MAX_THREADS:
            self.alarms = [e for e in self.alarms if e[2].deadline == e[0]]
            heapq.heapify(self.alarms)
        self.cond.notify_all()

    def next_deadline(self) -> float | None:
        """Caller holds ``cond``: the earliest wait timeout or alarm."""
        due = [heap[0][0] for heap in (self.timers, self.alarms) if heap]
        return min(due) if due else None

    def sleep(self, thread: GuestThread, seconds: float) -> None:
        with self.cond:
            self.block(thread, time.monotonic() + seconds, 0)

    def set_paused(self, paused: bool) -> None:
        """Caller holds ``cond``. Pausing freezes timers; resuming shifts their deadlines by
        the time spent paused, so a sleeping guest thread sleeps only its remaining time."""
        if paused == self.paused:
            return
        now = time.monotonic()
        if paused:
            self.paused_at = now
        else:
            delta = now - self.paused_at
            self.timers = [(d + delta, s, t, k, r) for d, s, t, k, r in self.timers]
            heapq.heapify(self.timers)
            self.alarms = [(d + delta, s, a) for d, s, a in self.alarms if a.deadline == d]
            for _, _, alarm in self.alarms:
                alarm.deadline = (alarm.deadline or 0.0) + delta
            heapq.heapify(self.alarms)
        self.paused = paused
        self.cond.notify_all()

    def live_timer(self, thread: GuestThread) -> tuple[float, int] | None:
        """Caller holds ``cond``: (deadline, result) of ``thread``'s pending timeout."""
        for deadline, _, owner, token, result in self.timers:
            if owner is thread and token == thread.token and thread.state == BLOCKED:
                return deadline, result
        return None

    def _fire_timers(self) -> None:
        if self.paused:
            return
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, thread, token, result = heapq.heappop(self.timers)
            if thread.token == token and thread.state == BLOCKED:
                self.wake(thread, result)
        while self.alarms and self.alarms[0][0] <= now:
            deadline, _, alarm = heapq.heappop(self.alarms)
            if alarm.deadline == deadline:
                alarm.fire(now)

    # -- futex ------------------------------------------------------------------
    def futex_wait(self, thread: GuestThread, addr: int, expected: int,
                   read: Callable[[int], int], deadline: float | None, bitset: int) -> int:
        """0 if now blocked, else -EAGAIN (value changed)."""
        with self.cond:
            if read(addr) != expected:
                return -EAGAIN
            thread.futex_addr = addr
            thread.futex_bitset = bitset
            self.futexes.setdefault(addr, []).append(thread)
            self.block(thread, deadline, -ETIMEDOUT)
            return 0

    def futex_wake(self, addr: int, count: int, bitset: int = 0xFFFFFFFF) -> int:
        with self.cond:
            woken = 0
            for waiter in list(self.futexes.get(addr, ())):
                if woken >= count:
                    break
                if waiter.futex_bitset & bitset:
                    self.wake(waiter, 0)
                    woken += 1
            return woken

    def futex_requeue(self, addr: int, wake: int, requeue: int, addr2: int) -> int:
        with self.cond:
            woken = self.futex_wake(addr, wake)
            moved = 0
            for waiter in list(self.futexes.get(addr, ())):
                if moved >= requeue:
                    break
                self._unwait(waiter)
                waiter.futex_addr = addr2
                self.futexes.setdefault(addr2, []).append(waiter)
                moved += 1
            return woken + moved

    def _unwait(self, thread: GuestThread) -> None:
        addr = thread.futex_addr
        if addr is None:
            return
        waiters = self.futexes.get(addr)
        if waiters and thread in waiters:
            waiters.remove(thread)
            if not waiters:
                del self.futexes[addr]
        thread.futex_addr = None
