"""Wait queues: guest threads parked until a file (pipe, socket, eventfd...) changes state.

A blocking call that cannot proceed parks its thread (``park``): the thread is blocked in the
scheduler, with the registers that make it issue the same syscall again (Linux's restart
after -ERESTARTSYS), and queued on the wait queue of every file it waits for. Whoever changes
such a file's state calls ``wake_all``/``wake_one``: each live waiter is woken to retry its
call, which then finds the new state (or parks again). A waiter is live while its thread is
still blocked with the token it had when it parked; a timeout or a signal ends the wait
without touching the queues, so entries go stale and are skipped and pruned.

Everything here happens under the partition's scheduler lock (``sched.cond``); the files
that own queues change their state under the same lock, so a check-then-park can never miss
a wake. Because a woken thread simply retries, nothing of a wait needs saving: ``restart_all``
turns every I/O wait into a pending retry before the machine's state is written.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from .memory import GuestFault
from .signals import ERESTARTSYS
from .threads import BLOCKED, GuestThread, Scheduler

if TYPE_CHECKING:
    from .memory import GuestMemory
    from .task import Task

__all__ = ["Waiter", "WaitQueue", "park", "restart_all", "resume_deadline", "take_progress",
           "keep_progress", "interrupted_result", "saved_deadline", "restore_deadline",
           "put_back"]

BLOCK = 1 << 70          # syscalls.common.BLOCK (imported there from here would cycle)
_PC_REGS = (X.UC_X86_REG_RIP, X.UC_X86_REG_EIP)


class Waiter:
    """One parked call: its thread, the token it parked with, how to retry it and the
    guest memory to put back before retrying (select's sets, zeroed while it waits)."""

    __slots__ = ("sched", "thread", "token", "restart", "restore", "partial")

    def __init__(self, sched: Scheduler, thread: GuestThread, restart: dict[int, int],
                 restore: list[tuple[GuestMemory, int, bytes]], partial: int | None) -> None:
        self.sched = sched
        self.thread = thread
        self.token = thread.token
        self.restart = restart
        self.restore = restore
        self.partial = partial      # bytes already moved: what an interrupted call returns

    def live(self) -> bool:
        return self.thread.state == BLOCKED and self.thread.token == self.token

    def fire(self) -> bool:
        """Caller holds ``sched.cond``: wake the thread to retry its call (if still live)."""
        if not self.live():
            return False
        for mem, addr, data in self.restore:
            try:
                mem.write(addr, data)
            except GuestFault:      # unmapped meanwhile: the retry reports EFAULT itself
                pass
        _RESUMED.add(self.thread)
        regs = dict(self.restart)
        result = regs.pop(self.thread.result_reg)
        self.sched.wake(self.thread, result)
        self.thread.pending.update(regs)
        _WAITERS.pop(self.thread, None)
        if self.partial is not None:
            _RETRIES[self.thread] = (regs, self.partial)
        return True


class WaitQueue:
    """Waiters on one file. ``seq`` counts state changes (epoll's edge-triggered mode)."""

    __slots__ = ("_waiters", "seq")

    def __init__(self) -> None:
        self._waiters: list[Waiter] = []
        self.seq = 0

    def add(self, waiter: Waiter) -> None:
        self._waiters = [w for w in self._waiters if w.live()]
        self._waiters.append(waiter)

    def wake_all(self) -> None:
        """Caller holds the scheduler's lock: the file changed; every waiter retries."""
        self.seq += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.fire()

    def wake_one(self) -> None:
        """Wake the first live waiter only (a single unit of progress, e.g. one message)."""
        self.seq += 1
        while self._waiters:
            if self._waiters.pop(0).fire():
                return

    def __len__(self) -> int:
        return len(self._waiters)


# Per-thread state of a parked call that must outlive one attempt. Weak keys: a thread
# that exits takes its entries with it.
_RESUMED: weakref.WeakSet[GuestThread] = weakref.WeakSet()
_DEADLINES: weakref.WeakKeyDictionary[GuestThread, tuple[tuple[object, ...], float]] = \
    weakref.WeakKeyDictionary()
_PROGRESS: weakref.WeakKeyDictionary[GuestThread, tuple[tuple[object, ...], int]] = \
    weakref.WeakKeyDictionary()
_WAITERS: weakref.WeakKeyDictionary[GuestThread, Waiter] = weakref.WeakKeyDictionary()
# Woken writes that moved bytes and have not run their retry yet: (retry registers, count).
_RETRIES: weakref.WeakKeyDictionary[GuestThread, tuple[dict[int, int], int]] = \
    weakref.WeakKeyDictionary()


def park(t: Task, queues: Iterable[WaitQueue], deadline: float | None = None,
         timeout_result: int = 0, key: tuple[object, ...] = (),
         restore: list[tuple[GuestMemory, int, bytes]] | None = None,
         args: dict[int, int] | None = None, partial: int | None = None,
         intr: int | None = ERESTARTSYS) -> int:
    """Caller holds ``sched.cond``. Park the calling thread on ``queues`` until one of them
    wakes it (then it retries the call) or ``deadline`` passes (then the call returns
    ``timeout_result``). ``key`` names the call so that its retry finds the same deadline
    (``resume_deadline``); ``args`` replaces argument registers for the retry; ``partial``
    is what the call returns if the wait is interrupted (a save) after moving that many
    bytes; ``intr`` is the code a signal ends the wait with (threads.py ``block``'s
    ``restart``). Returns BLOCK."""
    sched = t.kernel.sched
    thread = t.thread
    restart = t.restart_registers(args)
    sched.block(thread, deadline, timeout_result, intr)
    waiter = Waiter(sched, thread, restart, restore or [], partial)
    for queue in queues:
        queue.add(waiter)
    _WAITERS[thread] = waiter
    _RESUMED.discard(thread)
    if deadline is not None:
        _DEADLINES[thread] = (key, deadline)
    else:
        _DEADLINES.pop(thread, None)
    return BLOCK


def resume_deadline(t: Task, key: tuple[object, ...], timeout: float | None) -> float | None:
    """The deadline of the call named ``key``: the one it parked with if this is its retry,
    else ``timeout`` seconds from now (None: no deadline)."""
    thread = t.thread
    saved = _DEADLINES.pop(thread, None)
    resumed = thread in _RESUMED
    _RESUMED.discard(thread)
    if saved is not None and resumed and saved[0] == key:
        return saved[1]
    return None if timeout is None else time.monotonic() + timeout


def saved_deadline(thread: GuestThread, now: float) -> list[object] | None:
    """For a saved state: [the call's key, seconds left] of a woken wait that will retry
    (restart_all woke it), so that the restored retry keeps its deadline instead of
    waiting its whole timeout again (Linux's restart_block). None when there is none, or
    the key is not plain data."""
    saved = _DEADLINES.get(thread)
    if saved is None or thread not in _RESUMED:
        return None
    key, deadline = saved
    if not all(isinstance(part, (int, str)) for part in key):
        return None
    return [list(key), max(deadline - now, 0.0)]


def restore_deadline(thread: GuestThread, record: object, now: float) -> None:
    """The inverse of saved_deadline, on a restored thread (a malformed record is dropped:
    the retry then waits its whole timeout)."""
    if not (isinstance(record, list) and len(record) == 2 and isinstance(record[0], list)
            and isinstance(record[1], (int, float))):
        return
    key = tuple(part for part in record[0] if isinstance(part, (int, str)))
    _DEADLINES[thread] = (key, now + min(max(float(record[1]), 0.0), 1e9))
    _RESUMED.add(thread)


def keep_progress(t: Task, key: tuple[object, ...], done: int) -> None:
    """Remember that the call named ``key`` (its retry's arguments) already moved ``done``
    bytes, so the retry returns the whole count (a blocking write split around a wait)."""
    _PROGRESS[t.thread] = (key, done)


def take_progress(t: Task, key: tuple[object, ...]) -> int:
    """Bytes already moved by an earlier attempt of this call (0 if this is a new call)."""
    _RETRIES.pop(t.thread, None)
    saved = _PROGRESS.pop(t.thread, None)
    if saved is not None and saved[0] == key:
        return saved[1]
    return 0


def interrupted_result(thread: GuestThread) -> int | None:
    """Caller holds ``sched.cond``, about to end ``thread``'s wait for a signal: the count
    its call must return instead of EINTR or a restart (a write that already moved bytes
    returns them, as on Linux), or None when nothing moved."""
    waiter = _WAITERS.get(thread)
    if waiter is None or not waiter.live() or waiter.partial is None:
        return None
    _PROGRESS.pop(thread, None)
    _WAITERS.pop(thread, None)
    return waiter.partial


def put_back(thread: GuestThread) -> None:
    """Caller holds ``sched.cond``; a signal ended ``thread``'s wait: put back the guest
    memory its call changed for the wait (select's sets and timeout), so that the call
    returns EINTR with them as they were, or runs again on them, as on Linux."""
    waiter = _WAITERS.pop(thread, None)
    if waiter is None or waiter.token != thread.token:
        return
    for mem, addr, data in waiter.restore:
        try:
            mem.write(addr, data)
        except GuestFault:
            pass


def restart_all(sched: Scheduler) -> int:
    """Caller holds ``sched.cond`` (the machine is paused, about to be saved): wake every
    thread parked here to retry its call, so the saved state holds no wait on a queue (a
    retry re-parks it, with its full timeout again). A write that already moved bytes
    returns that count instead, as Linux's does when a signal interrupts it: its retry
    would need the count kept here, which the state file does not hold. Returns how many
    were woken."""
    woken = 0
    for thread, (regs, moved) in list(_RETRIES.items()):
        # Woken but not yet retried: return the count moved instead of retrying.
        pending = thread.pending
        if all(pending.get(reg) == value for reg, value in regs.items()) and \
                thread.state != BLOCKED:
            pc_reg = next(reg for reg in regs if reg in _PC_REGS)
            pending[pc_reg] = regs[pc_reg] + 2
            pending[thread.result_reg] = moved
            _PROGRESS.pop(thread, None)
        _RETRIES.pop(thread, None)
    for thread, waiter in list(_WAITERS.items()):
        if waiter.sched is not sched or not waiter.live():
            continue
        if waiter.partial is not None:
            _PROGRESS.pop(thread, None)
            _WAITERS.pop(thread, None)
            sched.wake(thread, waiter.partial)
        else:
            waiter.fire()
        woken += 1
    return woken
