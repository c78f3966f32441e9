"""Images in etcd: metadata under images/NAME, content in 1 MiB chunks under blobs/DIGEST/."""

from __future__ import annotations

from viridian.v1 import types_pb2 as pb

from controller.errors import AlreadyExists, NotFound
from controller.store.etcd import Compare, EtcdStore, Op
from controller.store.keys import Keys
from controller.store.records import decode


class ImageStore:
    def __init__(self, etcd: EtcdStore, keys: Keys) -> None:
        self._etcd = etcd
        self._keys = keys

    async def get(self, name: str) -> pb.Image:
        kv = await self._etcd.get(self._keys.image(name))
        if kv is None:
            raise NotFound(f"image {name!r} not found")
        return decode(pb.Image, kv.value)

    async def read_all(self) -> list[pb.Image]:
        kvs, _ = await self._etcd.get_prefix_paged(self._keys.images)
        return [decode(pb.Image, kv.value) for kv in kvs]

    async def put_blob(self, digest: str, content: bytes, chunk: int) -> None:
        """Store content under blobs/DIGEST/ in chunks below etcd's request size limit."""
        for i, off in enumerate(range(0, max(len(content), 1), chunk)):
            # One put per chunk: a transaction would exceed the request limit.
            await self._etcd.put(self._keys.blob_chunk(digest, i), content[off:off + chunk])

    async def read_blob(self, digest: str) -> list[bytes]:
        kvs, _ = await self._etcd.get_prefix(self._keys.blob_prefix(digest))
        return [kv.value for kv in kvs]

    async def put(self, image: pb.Image, replace: bool) -> None:
        key = self._keys.image(image.name)
        compares = [] if replace else [Compare(key, 0)]
        res = await self._etcd.txn(compares, [Op.put(key, image.SerializeToString())])
        if not res.succeeded:
            raise AlreadyExists(f"image {image.name!r} already exists")

    async def delete(self, name: str) -> pb.Image:
        image = await self.get(name)
        await self._etcd.delete(self._keys.image(name))
        if not any(i.digest == image.digest for i in await self.read_all()):
            await self._etcd.delete_prefix(self._keys.blob_prefix(image.digest))
        return image
