"""Signal syscalls: sigaction, sigprocmask, kill, tkill, tgkill."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import EXIT, E, s32

if TYPE_CHECKING:
    from ..task import Task




def sys_rt_sigaction(t: Task, sig: int, act: int, oact: int, size: int, *_: int) -> int:
    if oact:
        t.mem.write(oact, bytes(3 * t.abi.word + min(size, 128)))
    return 0


def sys_rt_sigprocmask(t: Task, how: int, new: int, old: int, size: int, *_: int) -> int:
    if old:
        t.mem.write(old, bytes(min(size, 128)))
    return 0


def _signal_self(t: Task, sig: int) -> int:
    if sig == 0:
        return 0
    t.raise_signal(sig)
    return EXIT


def sys_kill(t: Task, pid: int, sig: int, *_: int) -> int:
    if s32(pid) not in (0, -1, 1):
        return E.SRCH
    return _signal_self(t, s32(sig))


def sys_tkill(t: Task, tid: int, sig: int, *_: int) -> int:
    if s32(tid) not in t.kernel.sched.threads:
        return E.SRCH
    return _signal_self(t, s32(sig))


def sys_tgkill(t: Task, tgid: int, tid: int, sig: int, *_: int) -> int:
    return sys_tkill(t, tid, sig)
