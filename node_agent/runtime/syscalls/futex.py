"""futex: wait, wake, requeue and wake-op on the scheduler's wait queues."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..abi import read_timespec
from .common import BLOCK, E

if TYPE_CHECKING:
    from ..task import Task




def _futex_deadline(t: Task, ptr: int, fmt: str, absolute: bool, realtime: bool) -> float | None:
    if not ptr:
        return None
    value = read_timespec(t.mem, ptr, fmt)
    if not absolute:
        return time.monotonic() + value
    now = time.time() if realtime else time.monotonic() + t.kernel.mono_offset_ns / 1e9
    return time.monotonic() + (value - now)


def do_futex(t: Task, uaddr: int, op: int, val: int, timeout: int, uaddr2: int, val3: int,
             fmt: str) -> int:
    sched = t.kernel.sched
    cmd = op & 0x7F
    val &= 0xFFFFFFFF
    if cmd in (0, 9):                            # FUTEX_WAIT, FUTEX_WAIT_BITSET
        bitset = 0xFFFFFFFF if cmd == 0 else val3 & 0xFFFFFFFF
        if not bitset:
            return E.INVAL
        deadline = _futex_deadline(t, timeout, fmt, cmd == 9, bool(op & 256))
        assert t.thread is not None
        mem = t.mem
        rc = sched.futex_wait(t.thread, mem.futex_key(uaddr), val,
                              lambda _key: mem.u32(uaddr), deadline, bitset)
        return BLOCK if rc == 0 else rc
    if cmd in (1, 10):                           # FUTEX_WAKE, FUTEX_WAKE_BITSET
        return sched.futex_wake(t.mem.futex_key(uaddr), val,
                                0xFFFFFFFF if cmd == 1 else val3 & 0xFFFFFFFF)
    if cmd in (3, 4):                            # FUTEX_REQUEUE, FUTEX_CMP_REQUEUE
        with sched.cond:
            if cmd == 4 and t.mem.u32(uaddr) != val3 & 0xFFFFFFFF:
                return E.AGAIN
            return sched.futex_requeue(t.mem.futex_key(uaddr), val, timeout & 0x7FFFFFFF,
                                       t.mem.futex_key(uaddr2))
    if cmd == 5:                                 # FUTEX_WAKE_OP
        with sched.cond:
            old = t.mem.u32(uaddr2)
            kind, cmp = (val3 >> 28) & 7, (val3 >> 24) & 15
            oparg, cmparg = (val3 >> 12) & 0xFFF, val3 & 0xFFF
            if kind & 8:
                oparg = 1 << oparg
            new = [oparg, old + oparg, old | oparg, old & ~oparg, old ^ oparg][kind & 7]
            t.mem.put_u32(uaddr2, new)
            woken = sched.futex_wake(t.mem.futex_key(uaddr), val)
            hit = [old == cmparg, old != cmparg, old < cmparg, old <= cmparg, old > cmparg,
                   old >= cmparg][cmp] if cmp < 6 else False
            if hit:
                woken += sched.futex_wake(t.mem.futex_key(uaddr2), timeout & 0x7FFFFFFF)
            return woken
    return E.NOSYS
