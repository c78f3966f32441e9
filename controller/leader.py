"""Leader election through an etcd lease: the replica that creates the leader key leads
until its lease lapses. Leadership stops every leader-only loop the moment it is lost, and
every leader-only write carries the leader fence (store/leader.py), so a stalled leader that
wakes up after a new one was elected cannot change anything."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from controller.errors import StoreError
from controller.store import LeaderStore

log = logging.getLogger(__name__)
VACANT_POLL_S = 0.1  # how often a standby replica looks whether the leader key is gone


class LeaderElector:
    def __init__(
        self,
        leader: LeaderStore,
        identity: str,
        ttl: int,
        on_elected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        if ttl < 1:
            raise ValueError("leader lease TTL must be at least 1 second")
        self.renew_every = ttl / 3.0
        self.retry_every = ttl / 2.0
        if not ttl > self.renew_every * 2 > 0:
            raise ValueError("lease TTL must exceed twice the renew interval")
        self._store = leader
        self.identity = identity
        self.ttl = ttl
        self._on_elected = on_elected
        self._on_lost = on_lost
        self.leading = False
        self._task: asyncio.Task[None] | None = None
        self._lease = 0
        self._renewed = 0.0  # loop time the last successful renewal was sent

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leader-election")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.leading:
            await self._step_down()
            if self._lease:
                try:
                    await self._store.revoke(self._lease)  # let another replica lead now
                except StoreError:
                    pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not self.leading:
                    await self._campaign()
                    if not self.leading:
                        await self._wait_vacant()
                else:
                    await asyncio.sleep(self.renew_every)
                    await self._renew(loop.time())
            except StoreError as err:
                log.warning("leader election: %s", err)
                if not self.leading:
                    await asyncio.sleep(self.retry_every)

    async def _renew(self, began: float) -> None:
        """Renew the leader lease; step down once it may have lapsed (the last renewal that
        succeeded was sent more than TTL - renew interval ago) or it did lapse."""
        try:
            ttl = await self._store.renew(self._lease)
        except StoreError as err:
            age = asyncio.get_running_loop().time() - self._renewed
            if age > self.ttl - self.renew_every:
                log.warning("leader lease not renewed for %.1fs (%s): stepping down", age, err)
                await self._step_down()
            else:
                log.info("leader lease renewal failed (%s); retrying", err)
            return
        if ttl <= 0:
            log.warning("leader lease expired: stepping down")
            await self._step_down()
            return
        self._renewed = began

    async def _wait_vacant(self) -> None:
        """Until the leader key is gone (checked every VACANT_POLL_S with one cheap read),
        or retry_every at most. Campaigning only every retry_every left leadership vacant
        for up to that long after the old leader's lease expired (takeover 4.4 s > TTL)."""
        deadline = asyncio.get_running_loop().time() + self.retry_every
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(VACANT_POLL_S)
            if not await self._store.holder():
                return

    async def _campaign(self) -> None:
        began = asyncio.get_running_loop().time()
        lease = await self._store.grant(self.ttl)
        if not await self._store.campaign(self.identity, lease):
            await self._store.revoke(lease)
            return
        self._lease = lease
        self._renewed = began
        self.leading = True
        log.info("%s is now the leader", self.identity)
        await self._on_elected()

    async def _step_down(self) -> None:
        if self.leading:
            self.leading = False
            self._store.step_down()
            await self._on_lost()
