"""A level-triggered loop: notifications mark it dirty; it reconciles everything it owns,
and again after a back-off when reconciling failed, and periodically as a resync."""

from __future__ import annotations

import abc
import asyncio
import logging

log = logging.getLogger(__name__)


class Loop(abc.ABC):
    name = "loop"
    resync_s = 5.0
    #: the least time between two passes: notices that arrive meanwhile are taken together
    #: by the next one (for loops whose pass costs O(cluster), under a stream of changes)
    min_interval_s = 0.0

    def __init__(self) -> None:
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def kick(self, *_: object) -> None:
        self._dirty.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._dirty.set()
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the event is set, and stop() would then wait forever.
                async with asyncio.timeout(self.resync_s):
                    await self._dirty.wait()
            except TimeoutError:
                pass
            self._dirty.clear()
            try:
                again = await self.reconcile()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - logged, retried with back-off
                log.warning("%s: %s; retrying in %.2fs", self.name, err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                again = True
            if again:
                self._dirty.set()
            if self.min_interval_s:
                await asyncio.sleep(self.min_interval_s)

    @abc.abstractmethod
    async def reconcile(self) -> bool:
        """Do one pass; return True to run again at once (work left)."""
