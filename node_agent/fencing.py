"""Self-fencing: a node that cannot hear a controller stops its partitions.

The controller restarts a lost node's HA partitions elsewhere once the node's lease has
lapsed (TTL) plus a grace period. This agent stops every partition it runs when it has heard
nothing from a controller for the TTL, so the old copy is gone first. A frozen agent cannot
do that, so each worker also watches a file this agent touches only while contact is fresh
(the watchdog, see runtime/worker_main.py) and stops its guest by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from node_agent.supervisor import Supervisor

log = logging.getLogger(__name__)
DEFAULT_TTL_S = 3.0
CHECK_S = 0.1


class Fence:
    def __init__(self, supervisor: Supervisor, watchdog: Path) -> None:
        self.supervisor = supervisor
        self.watchdog = watchdog
        self.ttl = DEFAULT_TTL_S
        self.last_contact = float("-inf")
        self._last_feed = float("-inf")
        self.fenced = False
        watchdog.parent.mkdir(parents=True, exist_ok=True)
        if not watchdog.exists():
            # Never fed yet: workers started later see a stale file until the first contact.
            self._write()
            os.utime(watchdog, (0, 0))
        else:
            # A restarted agent inherits its predecessor's last contact (the watchdog's
            # mtime): adopted partitions keep running if it reconnects within the TTL, and
            # are fenced at the same moment their workers would fence themselves otherwise.
            try:
                self.ttl = float(json.loads(watchdog.read_text()).get("timeout", self.ttl))
                age = time.time() - watchdog.stat().st_mtime
                self.last_contact = time.monotonic() - max(age, 0.0)
            except (OSError, ValueError):
                pass

    def _write(self) -> None:
        tmp = self.watchdog.with_name(".watchdog.tmp")
        tmp.write_text(json.dumps({"timeout": self.ttl}))
        os.replace(tmp, self.watchdog)

    def contact(self, ttl: int | None = None) -> None:
        """A message from a controller arrived: the session is alive both ways."""
        now = time.monotonic()
        self.last_contact = now
        if ttl and float(ttl) != self.ttl:
            self.ttl = float(ttl)
            self._write()
            self._last_feed = now
        elif now - self._last_feed >= self.ttl / 6.0:
            try:
                os.utime(self.watchdog)
            except FileNotFoundError:
                self._write()
            self._last_feed = now
        if self.fenced:
            log.info("contact with a controller is back; partitions start again only when "
                     "the controller assigns them")
            self.fenced = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            silent = time.monotonic() - self.last_contact
            if self.fenced or silent <= self.ttl or not self.supervisor.running_count():
                continue
            self.fenced = True
            reason = f"fenced: no contact with a controller for {self.ttl:.0f}s"
            log.warning("%s; stopping %d partitions", reason, self.supervisor.running_count())
            self.supervisor.fence(reason)
