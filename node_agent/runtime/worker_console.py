"""The partition console as files: a bounded ring `console.log`, the guest's stdin.

`console.log` layout: a 16-byte header (the absolute number of bytes ever written, `end`,
as little-endian u64, followed by its bitwise complement so a torn read is detected),
then a data area of `capacity` bytes where absolute offset `o` lives at `16 + o % capacity`.
The writer (the worker) writes data first and the header last; a reader (the agent, any
process) reads the header, the range, then the header again, and keeps only the part of the
range the writer cannot have overwritten meanwhile. So readers need no lock and can follow
the console by absolute offset across agent restarts.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["ConsoleRing", "WorkerConsole", "read_ring", "RING_CAPACITY"]

RING_CAPACITY = 1 << 20
_HEADER = struct.Struct("<QQ")
_MASK = (1 << 64) - 1


class ConsoleRing:
    """Writer side of console.log (one per worker; thread-safe)."""

    def __init__(self, path: Path, capacity: int = RING_CAPACITY) -> None:
        self.capacity = capacity
        self.end = 0
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        os.pwrite(self._fd, _HEADER.pack(0, _MASK), 0)

    def append(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if len(data) > self.capacity:  # only the tail can survive anyway
                self.end += len(data) - self.capacity
                data = data[-self.capacity:]
            pos = self.end % self.capacity
            first = data[: self.capacity - pos]
            os.pwrite(self._fd, first, _HEADER.size + pos)
            if len(first) < len(data):
                os.pwrite(self._fd, data[len(first):], _HEADER.size)
            self.end += len(data)
            os.pwrite(self._fd, _HEADER.pack(self.end, self.end ^ _MASK), 0)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def _read_end(fd: int) -> int:
    for _ in range(100):
        raw = os.pread(fd, _HEADER.size, 0)
        if len(raw) < _HEADER.size:
            return 0
        end, check = _HEADER.unpack(raw)
        if end ^ _MASK == check:
            return int(end)
    raise OSError("console.log header keeps changing")


def read_ring(path: Path, offset: int, limit: int = RING_CAPACITY) -> tuple[bytes, int]:
    """Bytes from absolute `offset` (clamped to what the ring still holds) and the next offset.

    At most `limit` bytes are returned; call again with the returned offset to follow.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", max(offset, 0)
    try:
        capacity = os.fstat(fd).st_size - _HEADER.size
        end = _read_end(fd)
        if capacity <= 0 or end == 0:
            return b"", min(max(offset, 0), end)
        start = min(max(offset, end - capacity, 0), end)
        stop = min(end, start + limit)
        chunks: list[bytes] = []
        pos, want = start, stop - start
        while want > 0:
            at = pos % capacity
            n = min(want, capacity - at)
            chunks.append(os.pread(fd, n, _HEADER.size + at))
            pos += n
            want -= n
        data = b"".join(chunks)
        overwritten = _read_end(fd) - capacity  # bytes below this may have been rewritten
        if overwritten > start:
            cut = min(overwritten - start, len(data))
            data, start = data[cut:], start + cut
        return data, start + len(data)
    finally:
        os.close(fd)


class WorkerConsole:
    """The Console the Machine writes to: rate-limited ring output, optional stdin.

    Output over `rate` bytes/s (with a burst of `burst`) is dropped; a marker line says so
    when dropping starts and how much was lost when output flows again.
    """

    def __init__(self, ring: ConsoleRing, stdin: bool, rate: int = 256 << 10,
                 burst: int = 1 << 20, clock: Callable[[], float] = time.monotonic) -> None:
        self._ring = ring
        self._clock = clock
        self._rate, self._burst = float(rate), float(burst)
        self._tokens = float(burst)
        self._last = self._clock()
        self._dropped = 0
        self._out_lock = threading.Lock()
        self._stdin = bytearray()
        self._stdin_open = stdin
        self._cond = threading.Condition()

    # -- Console protocol ---------------------------------------------------------------
    def write(self, fd: int, data: bytes) -> None:
        with self._out_lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if len(data) > self._tokens:
                if not self._dropped:
                    self._ring.append(b"\n[viridian: console rate limit exceeded, "
                                      b"dropping output]\n")
                self._dropped += len(data)
                return
            if self._dropped:
                self._ring.append(f"\n[viridian: {self._dropped} console bytes dropped]\n"
                                  .encode())
                self._dropped = 0
            self._tokens -= len(data)
            self._ring.append(bytes(data))

    def read_stdin(self, n: int) -> bytes:
        with self._cond:
            while not self._stdin and self._stdin_open:
                self._cond.wait()
            chunk = bytes(self._stdin[:n])
            del self._stdin[:n]
            return chunk

    # -- fed by the control socket ------------------------------------------------------
    def feed_stdin(self, data: bytes) -> None:
        with self._cond:
            if self._stdin_open:
                self._stdin += data
                self._cond.notify_all()

    def close_stdin(self) -> None:
        with self._cond:
            self._stdin_open = False
            self._cond.notify_all()
