"""Clocks and sleeps: clock_gettime/getres, gettimeofday, time, nanosleep."""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from .. import accounting
from ..abi import clock_ns, read_timespec, write_timespec
from ..signals import ERESTART_RESTARTBLOCK, ERESTARTNOHAND
from .common import BLOCK

if TYPE_CHECKING:
    from ..task import Task

CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID = 2, 3




# -- time ---------------------------------------------------------------------------
def _clock_ns(t: Task, clock: int) -> int:
    """The guest's clock ``clock`` now: the CPU-time clocks are the calling process's or
    thread's user + system time (accounting.py), the others abi.clock_ns's."""
    if clock in (CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID):
        if clock == CLOCK_PROCESS_CPUTIME_ID:
            user, system = accounting.process_times(t.kernel, t.process)
        else:
            user, system = accounting.thread_times(t.kernel, t.thread)
        return int((user + system) * 1e9)
    return clock_ns(clock, t.kernel.mono_offset_ns)


def do_clock_gettime(t: Task, clock: int, ptr: int, fmt: str) -> int:
    write_timespec(t.mem, ptr, fmt, _clock_ns(t, clock))
    return 0


def do_clock_getres(t: Task, clock: int, ptr: int, fmt: str) -> int:
    if ptr:
        t.mem.write(ptr, struct.pack(fmt, 0, 1))
    return 0


def sys_gettimeofday(t: Task, tv: int, tz: int, *_: int) -> int:
    if tv:
        write_timespec(t.mem, tv, t.abi.ts_fmt, time.time_ns(), micro=True)
    if tz:
        t.mem.write(tz, bytes(8))
    return 0


def sys_time(t: Task, ptr: int, *_: int) -> int:
    now = int(time.time())
    if ptr:
        t.abi.write_word(t.mem, ptr, now)
    return now


def _sleep(t: Task, seconds: float, rem: int = 0, fmt: str = "", absolute: bool = False) -> int:
    """Park the caller; a signal handler ends the sleep with EINTR (the time left written
    to ``rem``), as Linux's -ERESTART_RESTARTBLOCK (-ERESTARTNOHAND for an absolute one)."""
    if seconds <= 0:
        return 0
    sched = t.kernel.sched
    with sched.cond:
        sched.block(t.thread, time.monotonic() + seconds, 0,
                    restart=ERESTARTNOHAND if absolute else ERESTART_RESTARTBLOCK)
        t.thread.sig.rem = (rem, fmt) if rem and not absolute else None
    return BLOCK


def do_nanosleep(t: Task, req: int, fmt: str, rem: int = 0) -> int:
    return _sleep(t, read_timespec(t.mem, req, fmt), rem, fmt)


def do_clock_nanosleep(t: Task, clock: int, flags: int, req: int, fmt: str,
                       rem: int = 0) -> int:
    value = read_timespec(t.mem, req, fmt)
    if flags & 1:                                # TIMER_ABSTIME
        value -= _clock_ns(t, clock) / 1e9
    return _sleep(t, value, rem, fmt, bool(flags & 1))
