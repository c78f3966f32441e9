"""Waiting for descriptors: poll, ppoll, select, pselect6 and epoll.

Readiness comes from each open file's ``poll_mask`` (files.py); a call that finds nothing
ready parks the thread on every polled file's wait queue with its deadline (waitq.py) and
re-evaluates when woken. On a timeout the call returns 0 with its results already cleared:
poll's revents are zero when it parks, select's sets are zeroed then (and put back from the
wait's record before a retry).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import waitq
from ..abi import TS64, read_timespec
from ..files import (
    MAX_FDS,
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLNVAL,
    POLLOUT,
    POLLPRI,
    DirFile,
    HostFile,
    OpenFile,
)
from ..signals import EINTR, ERESTARTNOHAND, NSIG, UNBLOCKABLE, refresh, wakes_wait
from ..waitq import WaitQueue
from .common import BLOCK, E, s32

if TYPE_CHECKING:
    from ..memory import GuestMemory
    from ..task import Task

__all__ = ["sys_poll", "sys_ppoll", "sys_ppoll_time64", "sys_select", "sys_old_select",
           "sys_pselect6", "sys_pselect6_time64", "EpollFile", "sys_epoll_create",
           "sys_epoll_create1", "sys_epoll_ctl", "sys_epoll_wait", "sys_epoll_pwait",
           "sys_epoll_pwait2"]

ALWAYS = POLLERR | POLLHUP | POLLNVAL
EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE, EPOLLWAKEUP = 1 << 31, 1 << 30, 1 << 28, 1 << 29
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
EPOLL_CLOEXEC = 0o2000000
EPOLL_MAX_EVENTS = 0x7FFFFFFF // 12
MAX_WATCHES = 1 << 16                  # interests of one epoll (Linux: a share of memory)


def _queues(files: list[OpenFile]) -> list[WaitQueue]:
    seen: dict[int, WaitQueue] = {}
    for file in files:
        for queue in file.wait_queues():
            seen[id(queue)] = queue
    return list(seen.values())


def _timeout_ms(ms: int) -> float | None:
    ms = s32(ms)
    return None if ms < 0 else ms / 1000.0


def _timespec(t: Task, ptr: int, fmt: str) -> float | None:
    return None if not ptr else read_timespec(t.mem, ptr, fmt)


def _with_mask(t: Task, sigmask: int, size: int, call: Callable[[], int]) -> int:
    """Run ``call`` (a poll, select or epoll wait) with the signal mask at ``sigmask`` in
    place of the thread's, as ppoll, pselect6 and epoll_pwait do (NULL: the thread's own).

    As rt_sigsuspend does, the thread's mask is kept in ``saved_mask``. A call that returns
    puts it back at once. A call that waits keeps the temporary mask while it waits: a
    signal it unblocks ends the wait with EINTR and its handler runs with that mask in
    place, the frame holding the thread's own to restore on return (signals.py
    ``_setup_frame``); a wait that times out or is woken to retry gets the thread's mask
    back before anything is delivered (signals.py ``deliver``), and a retry applies the
    call's mask again."""
    if not sigmask:
        return call()
    if size != 8:
        return E.INVAL
    mask = t.mem.u64(sigmask) & ((1 << NSIG) - 1) & ~UNBLOCKABLE
    thread = t.thread
    ts = thread.sig
    with t.kernel.sched.cond:
        if ts.saved_mask is None:
            ts.saved_mask = ts.blocked
        ts.blocked = mask
        refresh(thread)
    result = E.FAULT
    try:
        result = call()
    finally:
        if result != BLOCK:
            with t.kernel.sched.cond:
                if ts.saved_mask is not None:
                    ts.blocked, ts.saved_mask = ts.saved_mask, None
                refresh(thread)
    return result


def _interrupt(t: Task, code: int) -> int | None:
    """Caller holds ``sched.cond``. A signal the thread takes with its mask as it is now
    (the call's, for ppoll...) is pending: end the call for it as if it had waited and
    been interrupted (EINTR once a handler runs, or the call runs again), leaving the
    guest's memory as it is. None when no such signal is pending."""
    thread = t.thread
    if not wakes_wait(thread):
        return None
    thread.sig_dirty = True
    t.kernel.sched.block(thread, None, 0, restart=code)     # ends at once: interrupted
    return BLOCK


# -- poll ------------------------------------------------------------------------------------
def _do_poll(t: Task, fds_ptr: int, nfds: int, timeout: float | None) -> int:
    if nfds > MAX_FDS:
        return E.INVAL
    raw = t.mem.read(fds_ptr, 8 * nfds) if nfds else b""
    entries = [struct.unpack_from("<ihh", raw, 8 * i) for i in range(nfds)]
    key = ("poll", fds_ptr, nfds)
    deadline = waitq.resume_deadline(t, key, timeout)
    with t.kernel.sched.cond:
        table = t.fds.files
        out = bytearray(raw)
        ready = 0
        polled: list[OpenFile] = []
        for i, (fd, events, _) in enumerate(entries):
            revents = 0
            if fd >= 0:
                file = table.get(fd)
                if file is None:
                    revents = POLLNVAL
                else:
                    polled.append(file)
                    revents = file.poll_mask() & ((events & 0xFFFF) | ALWAYS)
            struct.pack_into("<h", out, 8 * i + 6, s16(revents))
            ready += bool(revents)
        if nfds:
            t.mem.write(fds_ptr, bytes(out))
        if ready:
            return ready
        interrupted = _interrupt(t, ERESTARTNOHAND)     # Linux: a signal before a timeout
        if interrupted is not None:
            return interrupted
        if deadline is not None and deadline <= time.monotonic():
            return 0
        return waitq.park(t, _queues(polled), deadline, 0, key, intr=ERESTARTNOHAND)


def s16(value: int) -> int:
    value &= 0xFFFF
    return value - 0x10000 if value & 0x8000 else value


def sys_poll(t: Task, fds_ptr: int, nfds: int, timeout: int, *_: int) -> int:
    return _do_poll(t, fds_ptr, nfds & 0xFFFFFFFF, _timeout_ms(timeout))


def _ppoll(t: Task, fds_ptr: int, nfds: int, tsp: int, sigmask: int, size: int,
           fmt: str) -> int:
    timeout = _timespec(t, tsp, fmt)
    return _with_mask(t, sigmask, size,
                      lambda: _do_poll(t, fds_ptr, nfds & 0xFFFFFFFF, timeout))


def sys_ppoll(t: Task, fds_ptr: int, nfds: int, tsp: int, sigmask: int, size: int,
              *_: int) -> int:
    return _ppoll(t, fds_ptr, nfds, tsp, sigmask, size, t.abi.ts_fmt)


def sys_ppoll_time64(t: Task, fds_ptr: int, nfds: int, tsp: int, sigmask: int, size: int,
                     *_: int) -> int:
    return _ppoll(t, fds_ptr, nfds, tsp, sigmask, size, TS64)


# -- select ----------------------------------------------------------------------------------
READ_SET = POLLIN | POLLHUP | POLLERR
WRITE_SET = POLLOUT | POLLERR
EXCEPT_SET = POLLPRI


def _set_bytes(t: Task, n: int) -> int:
    """Bytes of an fd_set covering ``n`` descriptors: whole longs of the architecture
    (little-endian, so fd i is bit i % 8 of byte i // 8 on both)."""
    bits = 8 * t.abi.word
    return (n + bits - 1) // bits * t.abi.word


def _do_select(t: Task, n: int, ptrs: tuple[int, int, int], timeout: float | None,
               tv_ptr: int, tv_fmt: str, key: tuple[object, ...]) -> int:
    n = s32(n)
    if n < 0:
        return E.INVAL
    n = min(n, MAX_FDS)
    size = _set_bytes(t, n)
    sets = [t.mem.read(p, size) if p else None for p in ptrs]
    deadline = waitq.resume_deadline(t, key, timeout)
    with t.kernel.sched.cond:
        table = t.fds.files
        wanted: dict[int, OpenFile] = {}
        for bitmap in sets:
            if bitmap is None:
                continue
            for fd in _bits(bitmap, n):
                file = table.get(fd)
                if file is None:
                    return E.BADF
                wanted[fd] = file
        masks = {fd: file.poll_mask() for fd, file in wanted.items()}
        results: list[bytes | None] = []
        ready = 0
        for bitmap, want in zip(sets, (READ_SET, WRITE_SET, EXCEPT_SET), strict=True):
            if bitmap is None:
                results.append(None)
                continue
            out = bytearray(len(bitmap))
            for fd in _bits(bitmap, n):
                if masks[fd] & want:
                    out[fd // 8] |= 1 << (fd % 8)
                    ready += 1
            results.append(bytes(out))
        if not ready:
            interrupted = _interrupt(t, ERESTARTNOHAND)   # the sets are left as they are
            if interrupted is not None:
                return interrupted
        expired = deadline is not None and deadline <= time.monotonic()
        if ready or expired:
            for ptr, result in zip(ptrs, results, strict=True):
                if ptr and result is not None:
                    t.mem.write(ptr, result)
            _remaining(t, tv_ptr, tv_fmt, deadline)
            return ready
        # Park with the sets cleared (a timeout returns 0 with empty sets); a wake puts the
        # guest's sets back before the retry reads them.
        restore: list[tuple[GuestMemory, int, bytes]] = []
        for ptr, bitmap in zip(ptrs, sets, strict=True):
            if ptr and bitmap is not None:
                t.mem.write(ptr, bytes(len(bitmap)))
                restore.append((t.mem, ptr, bitmap))
        if tv_ptr and deadline is not None:
            t.mem.write(tv_ptr, struct.pack(tv_fmt, 0, 0))   # what a timeout leaves there
            restore.append((t.mem, tv_ptr, _encode(tv_fmt, timeout or 0.0)))
        return waitq.park(t, _queues(list(wanted.values())), deadline, 0, key, restore,
                          intr=ERESTARTNOHAND)


def _encode(fmt: str, seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack(fmt, whole, int(round((seconds - whole) * 1e6)))


def _remaining(t: Task, ptr: int, fmt: str, deadline: float | None) -> None:
    """select writes back the time it did not wait (Linux does, on x86 both)."""
    if not ptr or not fmt or deadline is None:
        return
    left = max(deadline - time.monotonic(), 0.0)
    t.mem.write(ptr, _encode(fmt, left))


def _bits(bitmap: bytes, n: int) -> list[int]:
    found = []
    for index, byte in enumerate(bitmap):
        while byte:
            low = byte & -byte
            fd = index * 8 + low.bit_length() - 1
            if fd < n:
                found.append(fd)
            byte ^= low
    return found


def _timeval(t: Task, ptr: int) -> float | None:
    if not ptr:
        return None
    fmt = t.abi.ts_fmt
    sec, usec = struct.unpack(fmt, t.mem.read(ptr, struct.calcsize(fmt)))
    if sec < 0 or usec < 0:
        raise OSError(22, "bad timeval")
    return float(sec) + min(int(usec), 10**9) / 1e6


def sys_select(t: Task, n: int, rd: int, wr: int, ex: int, tv: int, *_: int) -> int:
    key = ("select", n, rd, wr, ex, tv)
    return _do_select(t, n, (rd, wr, ex), _timeval(t, tv), tv, t.abi.ts_fmt, key)


def sys_old_select(t: Task, args: int, *_: int) -> int:
    """i386 select(82): one pointer to the five arguments."""
    n, rd, wr, ex, tv = t.abi.read_words(t.mem, args, 5)
    return sys_select(t, n, rd, wr, ex, tv)


def _pselect(t: Task, n: int, rd: int, wr: int, ex: int, tsp: int, sig: int, fmt: str) -> int:
    """pselect6: its sixth argument points to {const sigset_t *ss; size_t ss_len}."""
    timeout = _timespec(t, tsp, fmt)
    mask = size = 0
    if sig:
        mask, size = t.abi.read_words(t.mem, sig, 2)
    key = ("pselect", n, rd, wr, ex, tsp)
    return _with_mask(t, mask, size,
                      lambda: _do_select(t, n, (rd, wr, ex), timeout, 0, "", key))


def sys_pselect6(t: Task, n: int, rd: int, wr: int, ex: int, tsp: int, sig: int) -> int:
    return _pselect(t, n, rd, wr, ex, tsp, sig, t.abi.ts_fmt)


def sys_pselect6_time64(t: Task, n: int, rd: int, wr: int, ex: int, tsp: int, sig: int) -> int:
    return _pselect(t, n, rd, wr, ex, tsp, sig, TS64)


# -- epoll -----------------------------------------------------------------------------------
class Interest:
    """One watched descriptor of an epoll instance."""

    __slots__ = ("file", "events", "data", "seen", "armed")

    def __init__(self, file: OpenFile, events: int, data: int) -> None:
        self.file = file
        self.events = events
        self.data = data
        self.seen = -1                  # queue generation last reported (EPOLLET)
        self.armed = True               # EPOLLONESHOT: until reported, then until CTL_MOD


class EpollFile(OpenFile):
    """An epoll instance: interests by descriptor number (the description they were added
    with; one whose description is released is dropped, as Linux drops it)."""

    def __init__(self, flags: int) -> None:
        super().__init__(flags, "anon_inode:[eventpoll]")
        self.interests: dict[int, Interest] = {}
        self.depth = 0
        self.queue = WaitQueue()        # woken by epoll_ctl: a waiter re-reads its set

    def ready(self) -> list[tuple[int, Interest, int]]:
        """(fd, interest, events) of every ready interest (caller holds the scheduler lock)."""
        out = []
        for fd, interest in list(self.interests.items()):
            if interest.file.released:
                del self.interests[fd]
                continue
            if not interest.armed:
                continue
            mask = self._mask(interest.file) & ((interest.events & 0xFFFF) | POLLERR | POLLHUP)
            if not mask:
                continue
            if interest.events & EPOLLET and interest.seen == _generation(interest.file):
                continue
            out.append((fd, interest, mask))
        return out

    def _mask(self, file: OpenFile) -> int:
        if isinstance(file, EpollFile):
            if self.depth > 4:
                return 0
            file.depth = self.depth + 1
            try:
                return POLLIN if file.ready() else 0
            finally:
                file.depth = 0
        return file.poll_mask()

    def poll_mask(self) -> int:
        return POLLIN if self.ready() else 0

    def wait_queues(self) -> list[WaitQueue]:
        if self.depth > 4:
            return [self.queue]
        files = [i.file for i in self.interests.values() if not i.file.released]
        self.depth += 1
        try:
            return [self.queue, *_queues(files)]
        finally:
            self.depth -= 1


def _generation(file: OpenFile) -> int:
    return sum(q.seq for q in file.wait_queues())


def sys_epoll_create(t: Task, size: int, *_: int) -> int:
    if s32(size) <= 0:
        return E.INVAL
    return t.fds.add(EpollFile(2))


def sys_epoll_create1(t: Task, flags: int, *_: int) -> int:
    if flags & ~EPOLL_CLOEXEC:
        return E.INVAL
    return t.fds.add(EpollFile(2), cloexec=bool(flags & EPOLL_CLOEXEC))


def sys_epoll_ctl(t: Task, epfd: int, op: int, fd: int, event: int, *_: int) -> int:
    ep = t.fds.get(s32(epfd))
    fd = s32(fd)
    target = t.fds.get(fd)
    if not isinstance(ep, EpollFile) or target is ep:
        return E.INVAL
    if isinstance(target, (HostFile, DirFile)):
        return E.PERM                       # as Linux: regular files cannot be watched
    events, data = 0, 0
    if op in (EPOLL_CTL_ADD, EPOLL_CTL_MOD):
        events, data = struct.unpack("<IQ", t.mem.read(event, 12))
    with t.kernel.sched.cond:
        current = ep.interests.get(fd)
        if current is not None and current.file.released:
            del ep.interests[fd]
            current = None
        if op == EPOLL_CTL_ADD:
            if current is not None:
                return -17                      # EEXIST
            if len(ep.interests) >= MAX_WATCHES:
                return -28                      # ENOSPC
            ep.interests[fd] = Interest(target, events, data)
        elif op == EPOLL_CTL_MOD:
            if current is None:
                return E.NOENT
            current.events, current.data, current.seen = events, data, -1
            current.armed = True
        elif op == EPOLL_CTL_DEL:
            if current is None:
                return E.NOENT
            del ep.interests[fd]
        else:
            return E.INVAL
        ep.queue.wake_all()                  # a waiting epoll_wait re-evaluates its set
    return 0


def _epoll_wait(t: Task, epfd: int, events: int, maxevents: int,
                timeout: float | None, key: tuple[object, ...]) -> int:
    ep = t.fds.get(s32(epfd))
    maxevents = s32(maxevents)
    if not isinstance(ep, EpollFile) or not 0 < maxevents <= EPOLL_MAX_EVENTS:
        return E.INVAL
    t.mem.read(events, 12 * min(maxevents, 64))          # EFAULT before anything is taken
    deadline = waitq.resume_deadline(t, key, timeout)
    with t.kernel.sched.cond:
        ready = ep.ready()[:maxevents]
        if ready:
            out = bytearray()
            for _fd, interest, mask in ready:
                out += struct.pack("<IQ", mask, interest.data)
                interest.seen = _generation(interest.file)
                if interest.events & EPOLLONESHOT:
                    interest.armed = False          # until EPOLL_CTL_MOD re-arms it
            t.mem.write(events, bytes(out))
            return len(ready)
        if deadline is not None and deadline <= time.monotonic():
            return 0                            # Linux: a timeout before a signal
        interrupted = _interrupt(t, EINTR)
        if interrupted is not None:
            return interrupted
        # epoll_wait is never restarted: a signal ends it with EINTR, handler or not
        return waitq.park(t, ep.wait_queues(), deadline, 0, key, intr=EINTR)


def sys_epoll_wait(t: Task, epfd: int, events: int, maxevents: int, timeout: int,
                   *_: int) -> int:
    return _epoll_wait(t, epfd, events, maxevents, _timeout_ms(timeout),
                       ("epoll_wait", epfd, events, maxevents, timeout))


def sys_epoll_pwait(t: Task, epfd: int, events: int, maxevents: int, timeout: int,
                    sigmask: int, size: int) -> int:
    return _with_mask(t, sigmask, size,
                      lambda: sys_epoll_wait(t, epfd, events, maxevents, timeout))


def sys_epoll_pwait2(t: Task, epfd: int, events: int, maxevents: int, tsp: int,
                     sigmask: int, size: int) -> int:
    timeout = _timespec(t, tsp, TS64)
    key = ("epoll_pwait2", epfd, events, maxevents, tsp)
    return _with_mask(t, sigmask, size,
                      lambda: _epoll_wait(t, epfd, events, maxevents, timeout, key))
