"""Per-architecture data layouts: stat, statx, timespec, iovec."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from .files import StatInfo
from .memory import GuestMemory

__all__ = ["Abi", "ABI_X86_64", "ABI_I386", "pack_statx", "TS64"]

TS64 = "<qq"


def _stat64_x86_64(st: StatInfo) -> bytes:
    return struct.pack("<QQQIIIIQqqqqqqqqq24x", st.dev, st.ino, st.nlink, st.mode, st.uid, st.gid,
                       0, st.rdev, st.size, st.blksize, st.blocks,
                       st.atime_ns // 10**9, st.atime_ns % 10**9, st.mtime_ns // 10**9,
                       st.mtime_ns % 10**9, st.ctime_ns // 10**9, st.ctime_ns % 10**9)


def _stat64_i386(st: StatInfo) -> bytes:
    return struct.pack("<QIIIIIIQIqIQIIIIIIQ", st.dev, 0, st.ino & 0xFFFFFFFF, st.mode,
                       st.nlink, st.uid, st.gid, st.rdev, 0, st.size, st.blksize, st.blocks,
                       (st.atime_ns // 10**9) & 0xFFFFFFFF, st.atime_ns % 10**9,
                       (st.mtime_ns // 10**9) & 0xFFFFFFFF, st.mtime_ns % 10**9,
                       (st.ctime_ns // 10**9) & 0xFFFFFFFF, st.ctime_ns % 10**9, st.ino)


def pack_statx(st: StatInfo) -> bytes:
    def ts(ns: int) -> bytes:
        return struct.pack("<qIi", ns // 10**9, ns % 10**9, 0)

    head = struct.pack("<IIQIIIHHQQQQ", 0x7FF, st.blksize, 0, st.nlink, st.uid, st.gid,
                       st.mode, 0, st.ino, st.size, st.blocks, 0)
    times = ts(st.atime_ns) + ts(st.ctime_ns) + ts(st.ctime_ns) + ts(st.mtime_ns)
    devs = struct.pack("<IIII", st.rdev >> 8, st.rdev & 0xFF, st.dev >> 8, st.dev & 0xFF)
    out = head + times + devs
    return out + bytes(256 - len(out))


@dataclass(frozen=True)
class Abi:
    """How one architecture lays out the structures syscalls exchange."""

    name: str             # uname machine
    word: int
    ts_fmt: str           # native struct timespec / timeval
    pack_stat: Callable[[StatInfo], bytes]

    @property
    def word_fmt(self) -> str:
        return "<Q" if self.word == 8 else "<I"

    def read_words(self, mem: GuestMemory, addr: int, n: int) -> tuple[int, ...]:
        fmt = f"<{n}{'Q' if self.word == 8 else 'I'}"
        return struct.unpack(fmt, mem.read(addr, self.word * n))

    def write_word(self, mem: GuestMemory, addr: int, value: int) -> None:
        mem.write(addr, struct.pack(self.word_fmt, value & ((1 << (8 * self.word)) - 1)))

    def iovecs(self, mem: GuestMemory, addr: int, count: int) -> list[tuple[int, int]]:
        if count < 0 or count > 1024:
            raise OSError(22, "invalid argument")
        flat = self.read_words(mem, addr, 2 * count)
        return [(flat[2 * i], flat[2 * i + 1]) for i in range(count)]


def read_timespec(mem: GuestMemory, addr: int, fmt: str) -> float:
    sec, nsec = (int(v) for v in struct.unpack(fmt, mem.read(addr, struct.calcsize(fmt))))
    if nsec < 0 or nsec >= 10**9 or sec < 0:
        raise OSError(22, "invalid timespec")
    return float(sec) + nsec / 1e9


def write_timespec(mem: GuestMemory, addr: int, fmt: str, ns: int, micro: bool = False) -> None:
    frac = (ns % 10**9) // 1000 if micro else ns % 10**9
    mem.write(addr, struct.pack(fmt, ns // 10**9, frac))


def clock_ns(clock: int, mono_offset_ns: int = 0) -> int:
    """The guest's clock ``clock``; monotonic clocks are the host's plus ``mono_offset_ns``
    (a restored partition's monotonic time continues from where it was saved)."""
    if clock in (0, 5, 8, 11):       # REALTIME, REALTIME_COARSE, *_ALARM, TAI
        return time.time_ns()
    if clock in (2, 3):              # PROCESS/THREAD_CPUTIME
        return time.process_time_ns()
    return time.monotonic_ns() + mono_offset_ns


ABI_X86_64 = Abi("x86_64", 8, "<qq", _stat64_x86_64)
ABI_I386 = Abi("i686", 4, "<ii", _stat64_i386)
