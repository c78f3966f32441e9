"""Controller replicas' presence: replicas/IDENTITY -> the replica's agent-port address,
attached to a lease the replica keeps alive. Replicas find their peers here (the blob store
replication of controller/images/peers.py)."""

from __future__ import annotations

import asyncio
import logging

from controller.errors import StoreError
from controller.store.etcd import EtcdStore
from controller.store.keys import Keys

log = logging.getLogger(__name__)


class ReplicaPresence:
    """Keeps this replica's record alive while it runs; deletes it at stop."""

    def __init__(self, etcd: EtcdStore, keys: Keys, identity: str, address: str,
                 ttl: int) -> None:
        self._etcd = etcd
        self._key = keys.replica(identity)
        self._address = address
        self._ttl = max(1, ttl)
        self._lease = 0
        self._task: asyncio.Task[None] | None = None

    async def announce(self) -> None:
        self._lease = await self._etcd.grant_lease(self._ttl)
        await self._etcd.put(self._key, self._address.encode(), self._lease)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replica-presence")

    async def _run(self) -> None:
        while True:
            try:
                if not self._lease or await self._etcd.keepalive(self._lease) <= 0:
                    await self.announce()
            except StoreError as err:
                log.warning("replica presence: %s", err)
            await asyncio.sleep(self._ttl / 3)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._lease:
            try:
                await self._etcd.revoke_lease(self._lease)
            except StoreError:
                pass
