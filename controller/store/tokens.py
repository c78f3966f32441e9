"""Tokens under tokens/ID (only the secret's sha256 is stored; see controller.security)."""

from __future__ import annotations

from viridian.v1 import types_pb2 as pb

from controller.errors import AlreadyExists, NotFound
from controller.store.etcd import Compare, EtcdStore, Op
from controller.store.keys import Keys
from controller.store.records import decode


class TokenStore:
    def __init__(self, etcd: EtcdStore, keys: Keys) -> None:
        self._etcd = etcd
        self._keys = keys

    async def create(self, token: pb.Token) -> int:
        """Returns the revision that wrote it."""
        key = self._keys.token(token.id)
        res = await self._etcd.txn([Compare(key, 0)], [Op.put(key, token.SerializeToString())])
        if not res.succeeded:
            raise AlreadyExists(f"token {token.id!r} already exists")
        return res.revision

    async def ensure(self, token: pb.Token) -> bool:
        """Create the token unless one with its id exists (bootstrap tokens, every start)."""
        try:
            await self.create(token)
        except AlreadyExists:
            return False
        return True

    async def get(self, token_id: str) -> pb.Token:
        kv = await self._etcd.get(self._keys.token(token_id))
        if kv is None:
            raise NotFound(f"token {token_id!r} not found")
        return decode(pb.Token, kv.value)

    async def read_all(self) -> list[pb.Token]:
        kvs, _ = await self._etcd.get_prefix_paged(self._keys.tokens)
        return [decode(pb.Token, kv.value) for kv in kvs]

    async def delete(self, token_id: str) -> None:
        key = self._keys.token(token_id)
        if await self._etcd.get(key) is None:
            raise NotFound(f"token {token_id!r} not found")
        await self._etcd.delete(key)
