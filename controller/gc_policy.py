"""The replica's garbage-collection policy: thresholds for a long-running server, and its
pauses timed.

The interpreter stops everything, the event loop included, while it collects. With the
defaults (a young collection every 700 net allocations), a replica holding 5,000 agent
sessions promoted the objects of messages in flight (a heartbeat waiting ~100 ms for its
ack) to the old generation thousands of times a second; full collections then ran every
2 s and took 250-500 ms each among the sessions' objects, and heartbeat acks waited behind
them. Measured (bench/scale.py, 2 cores, 5,000 agents): 59 full collections in two
minutes, 18.5 s of pauses. So: what exists at start-up (modules, the servers) is frozen out
of collections, young collections run every ``YOUNG`` allocations (objects of a message
in flight die before one comes), and full collections come far less often. Cycles are
still collected: the young generation every fraction of a second under load.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["GcPauses", "tune_for_server"]

YOUNG = 50_000   # allocations between young collections (CPython's default: 700)
MIDDLE = 20      # young collections per middle one (default 10)
OLD = 100        # middle collections per full one, at most (default 10)


def tune_for_server() -> None:
    """Freeze what exists now and set the thresholds above (call once, after start-up)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)


class GcPauses:
    """Observe each collection's duration with `observe(generation, seconds)` while
    installed (gc.callbacks)."""

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self.observe = observe
        self._started = 0.0
        self._generation = 0

    def collecting(self) -> str:
        """What collection is running now ("" if none), for a stall report (any thread)."""
        started, generation = self._started, self._generation
        if not started:
            return ""
        return (f"a garbage collection of generation {generation} has been running for "
                f"{time.perf_counter() - started:.2f}s")

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._generation = int(info.get("generation", 0))
            self._started = time.perf_counter()
        elif self._started:
            self.observe(int(info.get("generation", 0)), time.perf_counter() - self._started)
            self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
