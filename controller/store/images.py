"""Image metadata in etcd (never their bytes: those are in the blob store).

- images/NAME:TAG -> pb.Image: a tag record (name, tag, digest, entrypoint, OCI config).
- contents/DIGEST -> pb.Image: a content record (digest, size, arch, format, entrypoint and
  configuration of its latest push; no name or tag). Who references a content is derived:
  the tag records naming it and the partitions pinned to it (spec.image_digest). The leader
  deletes a content record neither has named for the GC grace (controller/images/gc.py); a
  forced `image rm` deletes it at once. Every replica then deletes its copy of the blob.

A push writes its tag record and its content record in one transaction; a tag compares the
content record's revision, so the GC cannot delete content that a new tag just named.
"""

from __future__ import annotations

from viridian.v1 import types_pb2 as pb

from controller.errors import Conflict, NotFound
from controller.store.etcd import Compare, EtcdStore, Op
from controller.store.keys import Keys
from controller.store.leader import LeaderStore
from controller.store.records import decode, encode


def content_of(image: pb.Image) -> pb.Image:
    """The content record for an image's digest: the tag record without name and tag (the
    configuration of the latest push of that content, which a partition pinned to it still
    runs with once every tag naming it is gone)."""
    content = pb.Image()
    content.CopyFrom(image)
    for f in ("name", "tag", "used_by"):
        content.ClearField(f)
    return content


def record_of(image: pb.Image) -> bytes:
    copy = pb.Image()
    copy.CopyFrom(image)
    copy.ClearField("used_by")  # derived, never stored
    return encode(copy)


class ImageStore:
    def __init__(self, etcd: EtcdStore, keys: Keys, leader: LeaderStore) -> None:
        self._etcd = etcd
        self._keys = keys
        self._leader = leader

    async def get(self, name: str, tag: str) -> pb.Image:
        kv = await self._etcd.get(self._keys.image(f"{name}:{tag}"))
        if kv is None:
            raise NotFound(f"image {name + ':' + tag!r} not found")
        return decode(pb.Image, kv.value)

    async def of_name(self, name: str) -> list[pb.Image]:
        """Every tag record of image `name`, by tag."""
        kvs, _ = await self._etcd.get_prefix_paged(self._keys.image(name + ":"))
        return [decode(pb.Image, kv.value) for kv in kvs]

    async def read_all(self) -> list[pb.Image]:
        kvs, _ = await self._etcd.get_prefix_paged(self._keys.images)
        return [decode(pb.Image, kv.value) for kv in kvs]

    async def put(self, image: pb.Image) -> int:
        """Write a tag record (replacing that tag) and its content record, in one txn;
        returns the revision."""
        ops = [Op.put(self._keys.image(f"{image.name}:{image.tag}"), record_of(image)),
               Op.put(self._keys.content(image.digest), encode(content_of(image)))]
        return (await self._etcd.txn([], ops)).revision

    async def tag(self, image: pb.Image) -> int:
        """Write a tag record for content that must still exist (its content record)."""
        kv = await self._etcd.get(self._keys.content(image.digest))
        if kv is None:
            raise NotFound(f"the content of image {image.name!r} ({image.digest}) was "
                           "deleted")
        res = await self._etcd.txn(
            [Compare(kv.key, kv.mod_revision)],
            [Op.put(self._keys.image(f"{image.name}:{image.tag}"), record_of(image))])
        if not res.succeeded:
            raise Conflict("the image's content changed while tagging; try again")
        return res.revision

    async def delete(self, records: list[pb.Image]) -> int:
        """Delete tag records (at most 128 in one txn: etcd's limit)."""
        revision = 0
        for i in range(0, len(records), EtcdStore.MAX_TXN_OPS):
            ops = [Op.delete(self._keys.image(f"{r.name}:{r.tag}"))
                   for r in records[i:i + EtcdStore.MAX_TXN_OPS]]
            revision = (await self._etcd.txn([], ops)).revision
        return revision

    async def contents(self) -> dict[str, tuple[pb.Image, int]]:
        """Every content record: digest -> (record, mod revision)."""
        kvs, _ = await self._etcd.get_prefix_paged(self._keys.contents)
        return {Keys.name_of(kv.key): (decode(pb.Image, kv.value), kv.mod_revision)
                for kv in kvs}

    async def content(self, digest: str) -> pb.Image | None:
        kv = await self._etcd.get(self._keys.content(digest))
        return decode(pb.Image, kv.value) if kv is not None else None

    async def content_revision(self, digest: str) -> int:
        """The content record's mod revision (0: absent)."""
        kv = await self._etcd.get(self._keys.content(digest))
        return kv.mod_revision if kv is not None else 0

    async def delete_content(self, digest: str, mod_revision: int, fenced: bool = True
                             ) -> int:
        """Delete a content record unchanged since it was read (a push of the same content
        since re-put it: then it stays). The GC's deletions carry the leader fence; a forced
        `image rm` deletes at once, from any replica. Returns the revision, 0 if it stayed."""
        key = self._keys.content(digest)
        compares = [self._leader.fence()] if fenced else []
        res = await self._etcd.txn([*compares, Compare(key, mod_revision)], [Op.delete(key)])
        return res.revision if res.succeeded else 0
