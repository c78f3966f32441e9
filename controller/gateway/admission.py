"""Admission of registrations: a replica takes on new sessions only as fast as it sets them up.

Measured with bench/scale.py (5,000 simulated agents, etcd and the replica on one 2-core
machine): with every Register admitted, a burst left thousands of agents registered but
without a first heartbeat acked. Each gave up after its timeout, registered again and
lengthened the queue the others waited in: 580 Registers a second and no session held after
minutes, with the replica busy the whole time (a metastable collapse; six bursts in eight
came through, the others never did).

Here at most `limit` nodes may be setting up at once: registered, their first heartbeat not
yet read. A Register beyond that is refused at once (UNAVAILABLE, before any etcd work) with
a hint when to come back in the trailing metadata (RETRY_AFTER_KEY, milliseconds), spread at
random so that those refused together do not return together, and longer the more are being
refused. The agent waits that long before its next round of controllers. A node that is
already setting up is always admitted (its agent retried), and a slot whose agent never
came back is freed after EXPIRY_S.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["RETRY_AFTER_KEY", "SetupAdmission"]

#: trailing metadata of a refused Register: milliseconds to wait before trying again
RETRY_AFTER_KEY = "viridian-retry-after-ms"


class SetupAdmission:
    LIMIT = 200
    EXPIRY_S = 5.0
    #: refusals a second that one more second of spread is added for
    REFUSALS_PER_SECOND_OF_SPREAD = 100.0
    MAX_SPREAD_S = 15.0

    def __init__(self, limit: int = LIMIT, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.limit = limit
        self._clock = clock
        self._rng = rng or random.Random()
        self._setting_up: dict[str, float] = {}   # node -> admitted at; oldest first
        self._window = (0.0, 0, 0)                # (start, refusals in it, in the one before)
        self.refused = 0

    def __len__(self) -> int:
        return len(self._setting_up)

    def admit(self, node: str) -> float | None:
        """None when `node` may register now (it then counts as setting up until done());
        otherwise the seconds it should wait before trying again."""
        now = self._clock()
        again = self._setting_up.pop(node, None) is not None
        if not again and len(self._setting_up) >= self.limit:
            self._expire(now)
        if again or len(self._setting_up) < self.limit:
            self._setting_up[node] = now
            return None
        self.refused += 1
        return self._retry_after(now)

    def done(self, node: str) -> None:
        """The node's first heartbeat was read (or its session ended)."""
        self._setting_up.pop(node, None)

    def _expire(self, now: float) -> None:
        for node, since in list(self._setting_up.items()):
            if now - since < self.EXPIRY_S:
                return
            del self._setting_up[node]

    def _retry_after(self, now: float) -> float:
        start, count, before = self._window
        if now - start >= 1.0:
            start, count, before = now, 0, count if now - start < 2.0 else 0
        count += 1
        self._window = (start, count, before)
        rate = max(count, before)
        spread = min(1.0 + rate / self.REFUSALS_PER_SECOND_OF_SPREAD, self.MAX_SPREAD_S)
        return self._rng.uniform(0.5, 0.5 + spread)
