"""The partition console as files: a bounded ring `console.log`, the guest's stdin.

`console.log` layout: a 16-byte header (the absolute number of bytes ever written, `end`,
as little-endian u64, followed by its bitwise complement so a torn read is detected),
then a data area of `capacity` bytes where absolute offset `o` lives at `16 + o % capacity`.
The file has its full size (sparse) from creation, so a reader takes the capacity from its
size: were the file still growing, a reader could size it before an append and read the
header after, and map offsets with the wrong capacity (a rotated snapshot).
The writer (the worker) writes data first and the header last; a reader (the agent, any
process) reads the header, the range, then the header again, and keeps only the part of the
range the writer cannot have overwritten meanwhile. So readers need no lock and can follow
the console by absolute offset across agent restarts.

`console.times` beside it holds when output was written: 16-byte marks (Unix time as a
little-endian double, absolute offset as u64), one per append at most every MARK_EVERY_S,
meaning "the bytes from this offset on were written at this time". The writer appends marks
and, past MAX_MARKS, replaces the file (atomically) by the marks still covering the ring.

A save carries the ring along (`history()`, the state file's CONS section) and a restore
seeds the new ring with it (`seed()`), offsets and times included: a partition's console
survives save, move and restore, bounded by the ring's capacity.
"""

from __future__ import annotations

import bisect
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["ConsoleRing", "WorkerConsole", "read_ring", "read_marks", "marks_path",
           "RING_CAPACITY", "Mark"]

RING_CAPACITY = 1 << 20
_HEADER = struct.Struct("<QQ")
_MASK = (1 << 64) - 1
_MARK = struct.Struct("<dQ")
_HISTORY = struct.Struct("<QQI")   # end, data length, number of marks
MARK_EVERY_S = 0.01
MAX_MARKS = 8192
#: (Unix time, absolute offset): the bytes from offset on were written at that time.
Mark = tuple[float, int]


def marks_path(console: Path) -> Path:
    return console.with_name("console.times")


def _parse_marks(raw: bytes, end: int) -> list[Mark]:
    """Valid marks only (finite times, offsets rising and not past `end`): the bytes may
    come from a state file, so they are not trusted."""
    out: list[Mark] = []
    usable = len(raw) - len(raw) % _MARK.size
    for t, off in _MARK.iter_unpack(raw[:usable]):
        if not math.isfinite(t) or t < 0 or off > end or (out and off < out[-1][1]):
            continue
        out.append((t, int(off)))
    return out


def _covering(marks: list[Mark], start: int, stop: int) -> list[Mark]:
    """The mark in force at `start` and every later one before `stop`."""
    i = bisect.bisect_right([m[1] for m in marks], start) - 1
    return [m for m in marks[max(i, 0):] if m[1] < stop or m[1] <= start]


def read_marks(console: Path, start: int = 0, stop: int = _MASK) -> list[Mark]:
    """The marks that cover console bytes [start, stop) (the one in force at `start` first)."""
    try:
        raw = marks_path(console).read_bytes()
    except OSError:
        return []
    return _covering(_parse_marks(raw, _MASK), start, stop)


class ConsoleRing:
    """Writer side of console.log (one per worker; thread-safe)."""

    def __init__(self, path: Path, capacity: int = RING_CAPACITY,
                 clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self.end = 0
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        os.pwrite(self._fd, _HEADER.pack(0, _MASK), 0)
        os.ftruncate(self._fd, _HEADER.size + capacity)
        self._marks: list[Mark] = []
        self._times = marks_path(path)
        self._tfd = os.open(self._times, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                            | os.O_CLOEXEC, 0o640)

    def append(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self._mark(self._clock())
            if len(data) > self.capacity:  # only the tail can survive anyway
                self.end += len(data) - self.capacity
                data = data[-self.capacity:]
            self._write(data)

    def _write(self, data: bytes) -> None:
        pos = self.end % self.capacity
        first = data[: self.capacity - pos]
        os.pwrite(self._fd, first, _HEADER.size + pos)
        if len(first) < len(data):
            os.pwrite(self._fd, data[len(first):], _HEADER.size)
        self.end += len(data)
        os.pwrite(self._fd, _HEADER.pack(self.end, self.end ^ _MASK), 0)

    def _mark(self, now: float) -> None:
        if self._marks and now - self._marks[-1][0] < MARK_EVERY_S:
            return
        self._marks.append((now, self.end))
        if len(self._marks) > MAX_MARKS:
            self._compact()
        else:
            os.write(self._tfd, _MARK.pack(now, self.end))

    def _compact(self) -> None:
        """Keep the marks that still cover the ring (thinned to half if still too many),
        and replace the file atomically so readers see the old or the new one."""
        low = self.end - self.capacity
        keep = _covering(self._marks, max(low, 0), _MASK)
        if len(keep) > MAX_MARKS // 2:
            keep = keep[:1] + keep[1::2]
        self._marks = keep
        self._rewrite_marks()

    def _rewrite_marks(self) -> None:
        tmp = self._times.with_name(self._times.name + ".tmp")
        tmp.write_bytes(b"".join(_MARK.pack(t, o) for t, o in self._marks))
        os.replace(tmp, self._times)
        os.close(self._tfd)
        self._tfd = os.open(self._times, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    # -- carried by a save, seeded by a restore --------------------------------------------
    def history(self) -> bytes:
        """What the ring holds with its marks, for the state file (CONS)."""
        with self._lock:
            data, _ = read_ring(self.path, 0, self.capacity)
            start = self.end - len(data)
            marks = _covering(self._marks, start, _MASK)
            return (_HISTORY.pack(self.end, len(data), len(marks))
                    + b"".join(_MARK.pack(t, o) for t, o in marks) + data)

    def seed(self, blob: bytes) -> None:
        """Continue a saved console: the same offsets and times, as if never stopped.
        Raises ValueError for a malformed blob (from a state file: not trusted)."""
        if len(blob) < _HISTORY.size:
            raise ValueError("console history is truncated")
        end, size, count = _HISTORY.unpack_from(blob)
        marks_end = _HISTORY.size + count * _MARK.size
        if size > end or end >= 1 << 62 or len(blob) != marks_end + size:
            raise ValueError("console history is inconsistent")
        data = blob[marks_end:]
        marks = _parse_marks(blob[_HISTORY.size:marks_end], end)[-MAX_MARKS // 2:]
        with self._lock:
            if self.end:
                raise ValueError("the console has output already")
            data = data[-self.capacity:]
            self.end = end - len(data)
            self._write(data)
            self._marks = marks
            self._rewrite_marks()

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
            os.close(self._tfd)


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

    def history(self) -> bytes:
        return self._ring.history()

    def restore_history(self, blob: bytes) -> None:
        self._ring.seed(blob)

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
