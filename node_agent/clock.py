"""The clock that contact deadlines are measured on.

CLOCK_BOOTTIME is monotonic (never steps with NTP or a wrong date), counts time spent in
suspend (a node that slept lost its lease meanwhile), and is the same for every process on
the host, so a deadline the agent writes down means the same instant to its workers and to
the agent that succeeds it after a restart.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "BootClock", "boottime"]


def boottime() -> float:
    """Seconds since boot, including suspend."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Clock(Protocol):
    def now(self) -> float:
        """Boot-time seconds (a fake in tests)."""
        ...


class BootClock:
    def now(self) -> float:
        return boottime()
