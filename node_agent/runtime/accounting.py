"""CPU accounting: the CPU time each guest thread uses, summed per process, and what a
process's reaped children used (Linux's utime/stime and cutime/cstime).

Each vCPU runs guest threads in turn on its own host thread, and has a ``CpuMeter``. The
meter reads that host thread's CPU clock (CLOCK_THREAD_CPUTIME_ID, through
pthread_getcpuclockid, so that another host thread can read it too) when a guest thread's
run slice starts and each time the slice is charged: the CPU time in between is the guest
thread's. Of it, the time the vCPU spent in syscall handlers and in signal delivery
(measured with the monotonic clock around them, and capped at the CPU time) is system
time; the rest (emulating the guest's instructions, translating them, switching to the
thread) is user time.

A slice is charged when it ends, and also whenever someone needs totals that are up to
date (getrusage, times, /proc/PID/stat, the process's exit), so that a thread that computes
for a long time without a syscall is seen, and a process killed while running has its time
counted before its parent reaps it. Charges add to the thread's and its process's totals at
once (a process's totals include its ended threads). When a parent reaps a child, the
child's totals and its own reaped children's go to the parent's children totals, and its
peak resident size (``maxrss``, KiB) to the parent's children peak, as Linux does.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .process import Process
    from .threads import GuestThread

__all__ = ["CpuMeter", "charge_running", "process_times", "thread_times", "reap",
           "note_rss", "rusage", "HZ"]

#: clock ticks per second (times(), /proc/PID/stat; sysconf(_SC_CLK_TCK) on Linux x86)
HZ = 100
#: serialises charges (each vCPU's own, and those made from other host threads)
_LOCK = threading.Lock()


class CpuMeter:
    """One vCPU's meter: which guest thread it runs, and the CPU time it has charged."""

    __slots__ = ("thread", "clock", "ident", "mark", "system", "system_mark")

    def __init__(self) -> None:
        self.thread: GuestThread | None = None
        self.clock: int | None = None
        self.ident = 0
        self.mark = 0.0              # the host thread's CPU clock when last charged
        #: seconds spent in syscall handlers and signal delivery, ever (the vCPU adds)
        self.system = 0.0
        self.system_mark = 0.0       # ``system`` when last charged

    def start(self, thread: GuestThread) -> None:
        """From the vCPU's host thread, before it runs ``thread``: a slice begins."""
        ident = threading.get_ident()
        if ident != self.ident or self.clock is None:
            try:
                self.clock = time.pthread_getcpuclockid(ident)
            except (AttributeError, OSError):       # pragma: no cover - not Linux
                self.clock = None
            self.ident = ident
        with _LOCK:
            self.mark = self._now()
            self.system_mark = self.system
            self.thread = thread

    def _now(self) -> float:
        if self.clock is None:                      # pragma: no cover - not Linux
            return time.thread_time() if self.ident == threading.get_ident() else self.mark
        try:
            return time.clock_gettime(self.clock)
        except OSError:                             # the host thread has ended
            return self.mark

    def charge(self) -> None:
        """Give the running guest thread the CPU time since the last charge."""
        with _LOCK:
            self._charge()

    def _charge(self) -> None:
        thread = self.thread
        if thread is None:
            return
        now = self._now()
        system_total = self.system
        used = max(now - self.mark, 0.0)
        system = min(max(system_total - self.system_mark, 0.0), used)
        self.mark, self.system_mark = now, system_total
        _add(thread, used - system, system)

    def stop(self) -> None:
        """From the vCPU's host thread: the slice ended; charge it."""
        with _LOCK:
            self._charge()
            self.thread = None


def _add(thread: GuestThread, user: float, system: float) -> None:
    thread.utime += user
    thread.stime += system
    process = thread.process
    process.utime += user
    process.stime += system


def charge_running(machine: Any, process: Process | None = None) -> None:
    """Charge every vCPU's slice so far (only those running ``process``'s threads, when
    given): the totals then include what running threads have used until now."""
    for vcpu in list(getattr(machine, "vcpus", ())):
        meter = getattr(vcpu, "meter", None)
        if meter is None:
            continue
        thread = meter.thread
        if thread is not None and (process is None or thread.process is process):
            meter.charge()


def process_times(machine: Any, process: Process) -> tuple[float, float]:
    """(user, system) seconds all threads of ``process`` have used, up to now."""
    charge_running(machine, process)
    with _LOCK:
        return process.utime, process.stime


def thread_times(machine: Any, thread: GuestThread) -> tuple[float, float]:
    """(user, system) seconds ``thread`` has used, up to now."""
    charge_running(machine, thread.process)
    with _LOCK:
        return thread.utime, thread.stime


def note_rss(process: Process, kib: int) -> int:
    """Record a resident size measured now (KiB); returns the process's peak."""
    process.maxrss = max(process.maxrss, kib)
    return process.maxrss


def reap(parent: Process, child: Process) -> None:
    """``parent`` reaped ``child``: the child's totals and its reaped children's become
    part of the parent's children totals (caller holds the scheduler's lock)."""
    with _LOCK:
        parent.cutime += child.utime + child.cutime
        parent.cstime += child.stime + child.cstime
    parent.cmaxrss = max(parent.cmaxrss, child.maxrss, child.cmaxrss)


def rusage(is64: bool, user: float, system: float, maxrss: int) -> bytes:
    """struct rusage: ru_utime, ru_stime (timevals), ru_maxrss (KiB), the other 13 longs
    zero; longs and timeval fields are the architecture's word (i386: 72 bytes)."""
    word = "q" if is64 else "i"

    def timeval(seconds: float) -> tuple[int, int]:
        us = max(int(seconds * 1_000_000), 0)
        return us // 1_000_000, us % 1_000_000

    return struct.pack(f"<4{word}14{word}", *timeval(user), *timeval(system), maxrss,
                       *([0] * 13))
