"""A sorted set of disjoint [start, end) integer ranges with a cap on how many it holds.

GuestMemory keeps its mmap allocations, its file-backed ranges and its executable ranges in
these. The guest chooses the addresses, so every operation is O(log n) plus a list splice,
and the number of ranges is capped (as Linux caps a process's mappings at max_map_count):
an operation that would exceed the cap changes nothing and reports failure.
"""

from __future__ import annotations

import bisect

__all__ = ["RangeSet"]


class RangeSet:
    """Disjoint, sorted ranges; touching ranges are merged."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __len__(self) -> int:
        return len(self.starts)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends, strict=True))

    def load(self, pairs: list[tuple[int, int]]) -> None:
        """Replace the contents (restore); pairs must be sorted and disjoint."""
        self.starts = [int(lo) for lo, _ in pairs]
        self.ends = [int(hi) for _, hi in pairs]

    def _span(self, lo: int, hi: int) -> tuple[int, int]:
        """Indices [i, j) of the ranges that intersect [lo, hi)."""
        return bisect.bisect_right(self.ends, lo), bisect.bisect_left(self.starts, hi)

    def overlaps(self, lo: int, hi: int) -> bool:
        i, j = self._span(lo, hi)
        return i < j

    def covers(self, lo: int, hi: int) -> bool:
        """True when [lo, hi) lies inside one range."""
        i = bisect.bisect_right(self.starts, lo) - 1
        return i >= 0 and self.ends[i] >= hi

    def containing(self, addr: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.ends[i]:
            return self.starts[i], self.ends[i]
        return None

    def intersecting(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of the ranges inside [lo, hi)."""
        i, j = self._span(lo, hi)
        return [(max(s, lo), min(e, hi)) for s, e in zip(self.starts[i:j], self.ends[i:j],
                                                         strict=True)]

    def next_start(self, addr: int) -> int | None:
        """The start of the first range at or after ``addr``."""
        i = bisect.bisect_left(self.starts, addr)
        return self.starts[i] if i < len(self) else None

    def _remainders(self, lo: int, hi: int) -> tuple[int, int, list[int], list[int]]:
        i, j = self._span(lo, hi)
        keep_s: list[int] = []
        keep_e: list[int] = []
        if i < j and self.starts[i] < lo:
            keep_s.append(self.starts[i])
            keep_e.append(lo)
        if i < j and self.ends[j - 1] > hi:
            keep_s.append(hi)
            keep_e.append(self.ends[j - 1])
        return i, j, keep_s, keep_e

    def can_remove(self, lo: int, hi: int) -> bool:
        """Whether ``remove(lo, hi)`` stays within the cap (it splits at most one range)."""
        i, j, keep_s, _ = self._remainders(lo, hi)
        return len(self) + len(keep_s) - (j - i) <= self.limit

    def uncovered(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of [lo, hi) no range covers."""
        out: list[tuple[int, int]] = []
        cursor = lo
        for s, e in self.intersecting(lo, hi):
            if s > cursor:
                out.append((cursor, s))
            cursor = max(cursor, e)
        if cursor < hi:
            out.append((cursor, hi))
        return out

    def remove(self, lo: int, hi: int) -> list[tuple[int, int]] | None:
        """Take [lo, hi) out; returns the removed parts, or None (nothing changed) when
        splitting a range would exceed the cap."""
        i, j, keep_s, keep_e = self._remainders(lo, hi)
        if i >= j:
            return []
        if len(self) + len(keep_s) - (j - i) > self.limit:
            return None
        removed = self.intersecting(lo, hi)
        self.starts[i:j] = keep_s
        self.ends[i:j] = keep_e
        return removed

    def add(self, lo: int, hi: int) -> bool:
        """Insert [lo, hi), merged with what it overlaps or touches; False (nothing changed)
        when that would exceed the cap."""
        if hi <= lo:
            return True
        i, j = self._span(lo, hi)
        if i > 0 and self.ends[i - 1] == lo:
            i -= 1
        if j < len(self) and self.starts[j] == hi:
            j += 1
        if i < j:
            lo, hi = min(lo, self.starts[i]), max(hi, self.ends[j - 1])
        if len(self) + 1 - (j - i) > self.limit:
            return False
        self.starts[i:j] = [lo]
        self.ends[i:j] = [hi]
        return True

    def grow(self, start: int, new_end: int) -> None:
        """Extend the range that starts at ``start`` (the caller checked the room)."""
        i = bisect.bisect_left(self.starts, start)
        self.ends[i] = new_end
        if i + 1 < len(self) and self.starts[i + 1] == new_end:
            self.ends[i] = self.ends[i + 1]
            del self.starts[i + 1], self.ends[i + 1]
