"""Typed reads and writes of Viridian's objects in etcd.

Objects are stored as serialized protobuf messages, one key per object. Every write that
depends on a read compares mod revisions in a transaction (optimistic concurrency); a failed
compare raises Conflict and the caller re-reads.

A partition's binding to a node lives in its own key (bindings/NAME, value = node name): its
mod revision is the partition's *epoch*, the fence every assignment carries. Each node has an
allocation record (allocations/NODE) listing what is bound there; binding and releasing
compare it, so two schedulers can never both fill the same free space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message
from viridian.v1 import types_pb2 as pb

from controller.errors import AlreadyExists, Conflict, NotFound
from controller.store.etcd import KV, Compare, EtcdStore, Op
from controller.store.keys import Keys

M = TypeVar("M", bound=Message)


def decode(cls: type[M], raw: bytes) -> M:
    msg = cls()
    msg.ParseFromString(raw)
    return msg


@dataclass(frozen=True)
class AllocEntry:
    vcpus: int
    memory_bytes: int
    group: str = ""


@dataclass
class Allocation:
    """What is bound to one node, as stored in allocations/NODE."""

    node: str
    entries: dict[str, AllocEntry] = field(default_factory=dict)
    mod_revision: int = 0  # 0 = the key does not exist yet

    def encode(self) -> bytes:
        return json.dumps(
            {n: [e.vcpus, e.memory_bytes, e.group] for n, e in sorted(self.entries.items())},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, node: str, kv: KV | None) -> Allocation:
        if kv is None:
            return cls(node)
        raw = json.loads(kv.value or b"{}")
        entries = {n: AllocEntry(int(v[0]), int(v[1]), str(v[2])) for n, v in raw.items()}
        return cls(node, entries, kv.mod_revision)

    @property
    def vcpus(self) -> int:
        return sum(e.vcpus for e in self.entries.values())

    @property
    def memory_bytes(self) -> int:
        return sum(e.memory_bytes for e in self.entries.values())


@dataclass
class StoredPartition:
    partition: pb.Partition
    mod_revision: int
    binding_node: str = ""
    binding_revision: int = 0  # the epoch; 0 = unbound


class ObjectStore:
    """Partitions, nodes, images, bindings and allocations on top of EtcdStore."""

    def __init__(self, etcd: EtcdStore, keys: Keys) -> None:
        self.etcd = etcd
        self.keys = keys

    # -- partitions ----------------------------------------------------------------------

    async def create_partition(self, p: pb.Partition, extra: list[Op] | None = None
                               ) -> pb.Partition:
        key = self.keys.partition(p.name)
        res = await self.etcd.txn(
            [Compare(key, 0)], [Op.put(key, p.SerializeToString()), *(extra or [])]
        )
        if not res.succeeded:
            raise AlreadyExists(f"partition {p.name!r} already exists")
        p.revision = res.revision
        return p

    async def get_partition(self, name: str) -> StoredPartition:
        kv = await self.etcd.get(self.keys.partition(name))
        if kv is None:
            raise NotFound(f"partition {name!r} not found")
        binding = await self.etcd.get(self.keys.binding(name))
        return self._stored(kv, binding)

    async def list_partitions(self) -> list[StoredPartition]:
        kvs, _ = await self.etcd.get_prefix(self.keys.partitions)
        bindings, _ = await self.etcd.get_prefix(self.keys.bindings)
        by_name = {Keys.name_of(b.key): b for b in bindings}
        return [self._stored(kv, by_name.get(Keys.name_of(kv.key))) for kv in kvs]

    def _stored(self, kv: KV, binding: KV | None) -> StoredPartition:
        p = decode(pb.Partition, kv.value)
        p.revision = kv.mod_revision
        sp = StoredPartition(p, kv.mod_revision)
        if binding is not None:
            sp.binding_node = binding.value.decode()
            sp.binding_revision = binding.mod_revision
            p.status.epoch = binding.mod_revision
        return sp

    async def update_partition(self, sp: StoredPartition, extra: list[Op] | None = None,
                               compares: list[Compare] | None = None) -> int:
        """Write sp.partition if it has not changed since sp was read; returns the revision."""
        key = self.keys.partition(sp.partition.name)
        p = sp.partition
        res = await self.etcd.txn(
            [Compare(key, sp.mod_revision), *(compares or [])],
            [Op.put(key, _without_revision(p)), *(extra or [])],
        )
        if not res.succeeded:
            raise Conflict(f"partition {p.name!r} changed concurrently")
        sp.mod_revision = res.revision
        p.revision = res.revision
        return res.revision

    async def delete_partition(self, sp: StoredPartition) -> None:
        name = sp.partition.name
        compares, ops = await self.release_ops(sp)
        compares.append(Compare(self.keys.partition(name), sp.mod_revision))
        ops.append(Op.delete(self.keys.partition(name)))
        res = await self.etcd.txn(compares, ops)
        if not res.succeeded:
            raise Conflict(f"partition {name!r} changed concurrently")

    # -- bindings and allocations --------------------------------------------------------

    async def get_allocation(self, node: str) -> Allocation:
        return Allocation.decode(node, await self.etcd.get(self.keys.allocation(node)))

    async def list_allocations(self) -> dict[str, Allocation]:
        kvs, _ = await self.etcd.get_prefix(self.keys.allocations)
        return {Keys.name_of(kv.key): Allocation.decode(Keys.name_of(kv.key), kv) for kv in kvs}

    def bind_ops(
        self, sps: list[StoredPartition], alloc: Allocation
    ) -> tuple[list[Compare], list[Op]]:
        """Compares and ops binding sps to alloc.node (their status already updated): each
        partition compared on the revision it was read at, the node's allocation record on
        the revision the placement decision saw. Adds them to alloc.entries."""
        compares = [Compare(self.keys.allocation(alloc.node), alloc.mod_revision)]
        ops: list[Op] = []
        for sp in sps:
            p = sp.partition
            p.ClearField("revision")  # read-only fields are not stored
            p.status.epoch = 0
            alloc.entries[p.name] = AllocEntry(
                p.spec.vcpus, p.spec.memory_bytes, p.spec.anti_affinity_group
            )
            compares.append(Compare(self.keys.partition(p.name), sp.mod_revision))
            ops.append(Op.put(self.keys.partition(p.name), p.SerializeToString()))
            ops.append(Op.put(self.keys.binding(p.name), alloc.node.encode()))
        ops.append(Op.put(self.keys.allocation(alloc.node), alloc.encode()))
        return compares, ops

    async def release_ops(
        self, sp: StoredPartition, alloc: Allocation | None = None
    ) -> tuple[list[Compare], list[Op]]:
        """Compares and ops dropping sp's binding and its entry in its node's allocation
        record. `alloc` (a copy the caller may hand over, e.g. from its cache) is read from
        etcd when not given; the compare on its revision keeps a stale one harmless."""
        name = sp.partition.name
        ops: list[Op] = [Op.delete(self.keys.binding(name))]
        compares: list[Compare] = []
        if sp.binding_node:
            if alloc is None:
                alloc = await self.get_allocation(sp.binding_node)
            if name in alloc.entries:
                del alloc.entries[name]
                compares.append(Compare(self.keys.allocation(alloc.node), alloc.mod_revision))
                ops.append(Op.put(self.keys.allocation(alloc.node), alloc.encode()))
        return compares, ops

    async def release(
        self, sp: StoredPartition, alloc: Allocation | None = None,
        extra: list[Op] | None = None,
    ) -> int:
        """Write sp.partition and drop its binding and allocation in one transaction."""
        compares, ops = await self.release_ops(sp, alloc)
        rev = await self.update_partition(sp, [*ops, *(extra or [])], compares)
        sp.binding_node = ""
        sp.binding_revision = 0
        sp.partition.status.epoch = 0
        return rev

    # -- nodes ---------------------------------------------------------------------------

    async def get_node(self, name: str) -> tuple[pb.Node, int]:
        kv = await self.etcd.get(self.keys.node(name))
        if kv is None:
            raise NotFound(f"node {name!r} not found")
        node = decode(pb.Node, kv.value)
        node.revision = kv.mod_revision
        return node, kv.mod_revision

    async def list_nodes(self) -> list[pb.Node]:
        kvs, _ = await self.etcd.get_prefix(self.keys.nodes)
        out = []
        for kv in kvs:
            node = decode(pb.Node, kv.value)
            node.revision = kv.mod_revision
            out.append(node)
        return out

    async def put_node(self, node: pb.Node, mod_revision: int) -> int:
        key = self.keys.node(node.name)
        res = await self.etcd.txn(
            [Compare(key, mod_revision)], [Op.put(key, _without_revision(node))]
        )
        if not res.succeeded:
            raise Conflict(f"node {node.name!r} changed concurrently")
        node.revision = res.revision
        return res.revision

    # -- images --------------------------------------------------------------------------

    async def get_image(self, name: str) -> pb.Image:
        kv = await self.etcd.get(self.keys.image(name))
        if kv is None:
            raise NotFound(f"image {name!r} not found")
        return decode(pb.Image, kv.value)

    async def list_images(self) -> list[pb.Image]:
        kvs, _ = await self.etcd.get_prefix(self.keys.images)
        return [decode(pb.Image, kv.value) for kv in kvs]

    async def put_blob(self, digest: str, content: bytes, chunk: int) -> None:
        """Store content under blobs/DIGEST/ in chunks below etcd's request size limit."""
        ops = [
            Op.put(self.keys.blob_chunk(digest, i), content[off : off + chunk])
            for i, off in enumerate(range(0, max(len(content), 1), chunk))
        ]
        for op in ops:  # one put per chunk: a transaction would exceed the request limit
            assert op.value is not None
            await self.etcd.put(op.key, op.value)

    async def read_blob(self, digest: str) -> list[bytes]:
        kvs, _ = await self.etcd.get_prefix(self.keys.blob_prefix(digest))
        return [kv.value for kv in kvs]

    async def put_image(self, image: pb.Image, replace: bool) -> None:
        key = self.keys.image(image.name)
        compares = [] if replace else [Compare(key, 0)]
        res = await self.etcd.txn(compares, [Op.put(key, image.SerializeToString())])
        if not res.succeeded:
            raise AlreadyExists(f"image {image.name!r} already exists")

    async def delete_image(self, name: str) -> pb.Image:
        image = await self.get_image(name)
        await self.etcd.delete(self.keys.image(name))
        still_used = any(i.digest == image.digest for i in await self.list_images())
        if not still_used:
            await self.etcd.delete_prefix(self.keys.blob_prefix(image.digest))
        return image


def _without_revision(msg: Message) -> bytes:
    """Serialize msg without its read-only revision field (the store knows it)."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    if copy.DESCRIPTOR.fields_by_name.get("revision") is not None:
        copy.ClearField("revision")
    if isinstance(copy, pb.Partition):
        copy.status.epoch = 0
    return copy.SerializeToString()
