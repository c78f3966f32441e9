"""Cluster secrets only the controllers know, under secrets/NAME (raw bytes): created once by
whichever replica needs one first, then the same for every replica."""

from __future__ import annotations

import secrets

from controller.errors import StoreError
from controller.store.etcd import Compare, EtcdStore, Op
from controller.store.keys import Keys

SECRET_BYTES = 32


class SecretStore:
    def __init__(self, etcd: EtcdStore, keys: Keys) -> None:
        self._etcd = etcd
        self._keys = keys
        self._known: dict[str, bytes] = {}

    async def ensure(self, name: str) -> bytes:
        """The secret `name`, made now if no replica made it yet (it never changes)."""
        known = self._known.get(name)
        if known is not None:
            return known
        key = self._keys.secret(name)
        fresh = secrets.token_bytes(SECRET_BYTES)
        await self._etcd.txn([Compare(key, 0)], [Op.put(key, fresh)])
        kv = await self._etcd.get(key)
        if kv is None or len(kv.value) < SECRET_BYTES:
            raise StoreError(f"cluster secret {name!r} is missing or short in etcd")
        self._known[name] = bytes(kv.value)
        return self._known[name]
