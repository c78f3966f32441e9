"""Admission of registrations: a replica takes on new sessions only as fast as it sets them up.

Measured with bench/scale.py (5,000 simulated agents, etcd and the replica on one 2-core
machine): with every Register admitted, a burst left thousands of agents registered but
without a first heartbeat acked. Each gave up after its timeout, registered again and
lengthened the queue the others waited in: 580 Registers a second and no session held after
minutes, with the replica busy the whole time (a metastable collapse; six bursts in eight
came through, the others never did).

Here at most `limit` nodes may be setting up at once: registered, their first heartbeat not
yet read. A Register beyond that is refused at once (UNAVAILABLE, before any etcd work) with
a hint when to come back in the trailing metadata (RETRY_AFTER_KEY, milliseconds). The agent
waits that long before its next round of controllers. A node that is already setting up is
always admitted (its agent retried), and a slot whose agent never came back is freed after
EXPIRY_S.

The hints book the refused agents into a queue that drains at the rate sessions are being set
up here: by Little's law, `limit` slots each held for the mean setup time (measured: admit to
first heartbeat, a running mean) take in limit / mean_setup nodes a second. Each refusal gets
the next free instant of that queue, so those refused together come back spread exactly as
fast as they can be taken in. The first version spread them at random over a window that
grew with the refusal rate, up to 15 s: after a replica died, 5,000 agents refused together
were told to wait up to 15 s while this replica sat idle for much of it (bench/scale.py).
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
    #: the setup time assumed before any was measured
    INITIAL_SETUP_S = 0.5
    #: weight of each measured setup in the running mean
    SMOOTHING = 0.05
    #: the shortest wait a hint asks for (so a refused agent does not come straight back)
    MIN_WAIT_S = 0.25
    #: the longest (agents cap hints at 30 s too: node_agent/session.py)
    MAX_WAIT_S = 30.0

    def __init__(self, limit: int = LIMIT, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.limit = limit
        self._clock = clock
        self._rng = rng or random.Random()
        self._setting_up: dict[str, float] = {}   # node -> admitted at; oldest first
        self.setup_s = self.INITIAL_SETUP_S       # the running mean of setup times
        self._next_free = 0.0                     # the queue's next free instant
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
        return self._book(now)

    def done(self, node: str) -> None:
        """The node's first heartbeat was read (or its session ended)."""
        since = self._setting_up.pop(node, None)
        if since is not None:
            self._measured(self._clock() - since)

    def incoming(self) -> int:
        """Nodes setting up now plus those booked to come back: the sessions this replica
        is about to hold (the heartbeat pace counts them, gateway/timings.py)."""
        booked = max(self._next_free - self._clock(), 0.0) * self.rate()
        return len(self._setting_up) + int(booked)

    def rate(self) -> float:
        """Nodes a second this replica takes in at the setup time measured."""
        return self.limit / max(self.setup_s, 1e-3)

    def _expire(self, now: float) -> None:
        for node, since in list(self._setting_up.items()):
            if now - since < self.EXPIRY_S:
                return
            del self._setting_up[node]
            self._measured(now - since)   # it held its slot that long

    def _measured(self, took: float) -> None:
        self.setup_s += self.SMOOTHING * (max(took, 0.0) - self.setup_s)

    def _book(self, now: float) -> float:
        spacing = 1.0 / self.rate()
        at = min(max(self._next_free, now + self.MIN_WAIT_S), now + self.MAX_WAIT_S)
        self._next_free = at + spacing
        return at - now + self._rng.uniform(0.0, spacing)
