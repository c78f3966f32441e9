"""How late the event loop runs what is due: a task asks to wake every `interval` and
records by how much it woke late.

A replica serves every agent session, every API call and every watch on one asyncio loop;
when the loop is busy, heartbeat acks wait in its queue however fast etcd answers. This
lag is the figure that tells a loop-bound replica from an etcd-bound one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["LoopLagMonitor"]

INTERVAL_S = 0.1


class LoopLagMonitor:
    def __init__(self, observe: Callable[[float], None], interval: float = INTERVAL_S) -> None:
        self.observe = observe
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, loop.time() - due))
