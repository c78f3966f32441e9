"""eventfd: a 64-bit counter as a file; reads block at 0, writes block before overflow."""

from __future__ import annotations

import errno
import struct
import threading

from .files import O_RDWR, POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM, OpenFile, StatInfo
from .waitq import WaitQueue

__all__ = ["EventFd", "EFD_SEMAPHORE", "MAX_COUNT"]

EFD_SEMAPHORE = 1
MAX_COUNT = (1 << 64) - 2


class EventFd(OpenFile):
    """The counter; guarded by ``cond`` (the partition scheduler's lock)."""

    blocking = True
    message_writes = True

    def __init__(self, flags: int, cond: threading.Condition, count: int,
                 semaphore: bool) -> None:
        super().__init__((flags & ~3) | O_RDWR, "anon_inode:[eventfd]")
        self.cond = cond
        self.count = count
        self.semaphore = semaphore
        self.queue = WaitQueue()

    def read(self, n: int) -> bytes:
        if n < 8:
            raise OSError(errno.EINVAL, "eventfd reads 8 bytes")
        with self.cond:
            if not self.count:
                raise OSError(errno.EAGAIN, "counter is 0")
            value = 1 if self.semaphore else self.count
            self.count -= value
            self.queue.wake_all()
            return struct.pack("<Q", value)

    def write(self, data: bytes) -> int:
        if len(data) < 8:
            raise OSError(errno.EINVAL, "eventfd writes 8 bytes")
        (value,) = struct.unpack_from("<Q", data)
        if value == (1 << 64) - 1:
            raise OSError(errno.EINVAL, "eventfd value out of range")
        with self.cond:
            if self.count + value > MAX_COUNT:
                raise OSError(errno.EAGAIN, "counter would overflow")
            self.count += value
            if value:
                self.queue.wake_all()
            return 8

    def unread(self) -> int:
        return 8 if self.count else 0

    def poll_mask(self) -> int:
        mask = POLLIN | POLLRDNORM if self.count else 0
        if self.count < MAX_COUNT:
            mask |= POLLOUT | POLLWRNORM
        return mask

    def wait_queues(self) -> list[WaitQueue]:
        return [self.queue]

    def stat(self) -> StatInfo:
        return StatInfo.synthetic(0o600, ino=id(self) & 0xFFFFFF)

    def close(self) -> None:
        with self.cond:
            self.queue.wake_all()
