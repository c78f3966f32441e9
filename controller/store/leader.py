"""The leader key: campaigning for it, and the fence every leader-only write carries.

The replica that creates /viridian/leader (attached to its own lease) leads. Its writes that
only the leader may make (bindings, evictions, NotReady marks, drain steps) compare the
leader key's mod revision with the one it created: once its lease lapses, the key is gone or
belongs to another replica, and a stalled old leader's late writes fail instead of landing.
"""

from __future__ import annotations

from controller.errors import NotLeader
from controller.store.etcd import Compare, EtcdStore, Op
from controller.store.keys import Keys


class LeaderStore:
    def __init__(self, etcd: EtcdStore, keys: Keys) -> None:
        self._etcd = etcd
        self._keys = keys
        self._revision = 0  # mod revision of the leader key we created; 0 = not leading

    async def grant(self, ttl: int) -> int:
        return await self._etcd.grant_lease(ttl)

    async def renew(self, lease: int) -> int:
        return await self._etcd.keepalive(lease)

    async def revoke(self, lease: int) -> None:
        await self._etcd.revoke_lease(lease)

    async def campaign(self, identity: str, lease: int) -> bool:
        """Create the leader key if absent; True if this replica now leads."""
        key = self._keys.leader
        res = await self._etcd.txn([Compare(key, 0)], [Op.put(key, identity.encode(), lease)])
        self._revision = res.revision if res.succeeded else 0
        return res.succeeded

    async def holder(self) -> str:
        """Identity of the leading replica ("" if none)."""
        kv = await self._etcd.get(self._keys.leader)
        return kv.value.decode() if kv is not None else ""

    def step_down(self) -> None:
        self._revision = 0

    @property
    def leading(self) -> bool:
        return self._revision > 0

    def fence(self) -> Compare:
        """The compare that makes a write land only while this replica still leads."""
        if not self._revision:
            raise NotLeader("this controller replica does not lead")
        return Compare(self._keys.leader, self._revision)
