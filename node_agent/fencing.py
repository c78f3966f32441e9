"""Self-fencing: a node that may have been declared lost stops its partitions.

A controller acks a heartbeat only after a renewal of the node's lease that began after the
heartbeat arrived has succeeded, so the lease outlives the heartbeat's *send* time by at
least the TTL (likewise a Register reply and the Register's send time). The contact deadline
is therefore the send time of the newest acked heartbeat (or Register) + TTL - margin,
measured on CLOCK_BOOTTIME. At the deadline this agent stops every partition (reports say
FENCED); the controller restarts HA partitions elsewhere only after the lease has lapsed and
a grace period, so the old copy is gone first.

A frozen agent cannot fence, so the deadline also goes to the watchdog file, and each
worker stops its guest by itself once it passes (runtime/worker_main.py). A restarted agent
inherits the deadline from that file: adopted partitions keep running if it reconnects in
time and are fenced at the same instant as before otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from node_agent.clock import Clock
from node_agent.runtime.watchdog_file import read_deadline, read_ttl, write_deadline
from node_agent.timing import DEFAULT_TTL_S, Timing

log = logging.getLogger(__name__)
CHECK_S = 0.1
NEVER = 0.0  # a deadline in the past on every clock that counts from boot


class Fenceable(Protocol):
    def fence(self, reason: str) -> int:
        """Stop whatever runs and is not being fenced yet; returns how many."""
        ...


class Fence:
    def __init__(self, target: Fenceable, watchdog: Path, clock: Clock) -> None:
        self.target = target
        self.watchdog = watchdog
        self.clock = clock
        self.ttl = DEFAULT_TTL_S
        self.fenced = False
        watchdog.parent.mkdir(parents=True, exist_ok=True)
        inherited = read_deadline(watchdog)
        if inherited is None:
            # Never in contact: workers started later must not run without it.
            self.deadline = NEVER
            self._write()
        else:
            self.ttl = read_ttl(watchdog) or self.ttl
            # No legitimate deadline lies more than a TTL ahead: guard against a bad file.
            self.deadline = max(min(inherited, clock.now() + self.ttl), NEVER)
            if self.deadline != inherited:
                self._write()
            log.info("inherited a contact deadline %.2fs away", self.remaining())

    def _write(self) -> None:
        try:
            write_deadline(self.watchdog, self.deadline, self.ttl)
        except OSError as err:  # the workers fence at the old deadline: safe
            log.warning("cannot write the watchdog file %s: %s", self.watchdog, err)

    def remaining(self) -> float:
        return self.deadline - self.clock.now()

    def contact(self, sent_at: float, timing: Timing) -> bool:
        """A controller answered a message sent at `sent_at`: the lease outlives it by the
        TTL. Moves the deadline (never backwards); True if it moved."""
        deadline = sent_at + timing.ttl - timing.margin
        self.ttl = timing.ttl
        if deadline <= self.deadline:
            return False
        self.deadline = deadline
        self._write()
        if self.fenced and self.remaining() > 0:
            self.fenced = False
            log.info("contact with a controller is back; partitions start again only when "
                     "a controller assigns them")
        return True

    def check(self) -> None:
        """Fence if the deadline has passed (again for anything started since)."""
        if self.remaining() > 0:
            return
        reason = (f"fenced: no acknowledged contact with a controller in time "
                  f"(lease TTL {self.ttl:g}s)")
        stopped = self.target.fence(reason)
        if stopped:
            log.warning("%s; stopping %d partitions", reason, stopped)
        if stopped or self.deadline > NEVER:  # not merely never in contact yet
            self.fenced = True

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(min(max(self.remaining(), 0.01), CHECK_S))
