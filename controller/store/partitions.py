"""Partitions in etcd: reads, and the writes the state machine's outcomes call for.

Every write compares the mod revision the change was computed from (optimistic
concurrency). `change()` is the one read-change-compare-write helper: read (from the cache
on the first try when allowed, from etcd after a conflict), let the caller's pure function
decide, write with the compares, and again on conflict. A binding's mod revision is the
partition's epoch; each node's allocation record lists what is bound there and is compared
by every bind and release, so two writers can never both fill the same free space.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from viridian.v1 import types_pb2 as pb

from controller.errors import AlreadyExists, Conflict, NotFound
from controller.store.cache import ClusterCache
from controller.store.etcd import KV, Compare, EtcdStore, Op
from controller.store.events import EventStore
from controller.store.keys import Keys
from controller.store.leader import LeaderStore
from controller.store.records import (
    Allocation,
    AllocEntry,
    NodeGuard,
    StoredPartition,
    WriteLike,
    decode,
    encode,
)
from controller.store.scan import ScanPage, between, scan

log = logging.getLogger(__name__)
RETRIES = 8
LIST_PAGE = 1000
W = TypeVar("W", bound=WriteLike)


class PartitionStore:
    def __init__(self, etcd: EtcdStore, keys: Keys, events: EventStore, leader: LeaderStore,
                 cache: ClusterCache) -> None:
        self._etcd = etcd
        self._keys = keys
        self._events = events
        self._leader = leader
        self._cache = cache

    # -- reads ---------------------------------------------------------------------------

    async def get(self, name: str) -> StoredPartition:
        kv = await self._etcd.get(self._keys.partition(name))
        if kv is None:
            raise NotFound(f"partition {name!r} not found")
        binding = await self._etcd.get(self._keys.binding(name))
        return self._stored(kv, binding)

    async def read_all(self) -> list[StoredPartition]:
        """Every partition with its binding, read in pages at one revision."""
        kvs, revision = await self._etcd.get_prefix_paged(self._keys.partitions,
                                                          page=LIST_PAGE)
        bindings, _ = await self._etcd.get_prefix_paged(self._keys.bindings, revision,
                                                        LIST_PAGE)
        by_name = {Keys.name_of(b.key): b for b in bindings}
        return [self._stored(kv, by_name.get(Keys.name_of(kv.key))) for kv in kvs]

    async def page(self, keep: Callable[[pb.Partition], bool], *, name_prefix: str = "",
                   after: str = "", revision: int = 0, want: int) -> ScanPage[pb.Partition]:
        """One page of partitions (by name, with their epochs) that `keep` accepts: see
        store.scan. The bindings are read for the page's name range at its revision."""

        def pick(kv: KV) -> pb.Partition | None:
            p = decode(pb.Partition, kv.value)
            p.revision = kv.mod_revision
            return p if keep(p) else None

        page = await scan(self._etcd, self._keys.partitions, name_prefix=name_prefix,
                          after=after, revision=revision, want=want, pick=pick)
        if page.items:
            bindings = await between(self._etcd, self._keys.bindings, page.items[0].name,
                                     page.items[-1].name, page.revision)
            for p in page.items:
                b = bindings.get(p.name)
                if b is not None:
                    p.status.epoch = b.mod_revision
        return page

    def _stored(self, kv: KV, binding: KV | None) -> StoredPartition:
        p = decode(pb.Partition, kv.value)
        p.revision = kv.mod_revision
        sp = StoredPartition(p, kv.mod_revision)
        if binding is not None:
            sp.binding_node = binding.value.decode()
            sp.binding_revision = binding.mod_revision
            p.status.epoch = binding.mod_revision
        return sp

    async def allocation(self, node: str) -> Allocation:
        return Allocation.decode(node, await self._etcd.get(self._keys.allocation(node)))

    # -- writes --------------------------------------------------------------------------

    async def create(self, p: pb.Partition, notes: Sequence[tuple[str, str, bool]]) -> int:
        key = self._keys.partition(p.name)
        events = await self._events.ops("Partition", p.name, notes)
        res = await self._etcd.txn([Compare(key, 0)], [Op.put(key, encode(p)), *events])
        if not res.succeeded:
            raise AlreadyExists(f"partition {p.name!r} already exists")
        p.revision = res.revision
        return res.revision

    async def change(self, name: str, decide: Callable[[StoredPartition], W], *,
                     from_cache: bool = False, fenced: bool = False,
                     guard: Sequence[Compare] = ()) -> W:
        """Read partition `name`, apply decide() (pure, may raise domain errors) and write
        its outcome compared on what was read (plus `guard`, plus the leader fence when
        `fenced`); read again and retry on conflict."""
        for attempt in range(RETRIES):
            sp = self._cache.stored(name) if from_cache and attempt == 0 else None
            if sp is None:
                sp = await self.get(name)
            out = decide(sp)
            if not out.write:
                return out
            try:
                await self.apply(sp, out, fenced=fenced, guard=guard)
            except Conflict as err:
                if fenced and not self._leader.leading:
                    raise  # NotLeader, or a conflict seen after losing leadership
                log.debug("%s: %s; reading again", name, err)
                continue
            return out
        raise Conflict(f"partition {name!r} kept changing; try again")

    async def apply(self, sp: StoredPartition, out: WriteLike, *, fenced: bool = False,
                    guard: Sequence[Compare] = ()) -> int:
        """Write one outcome (update, release or delete; binds go through bind())."""
        if out.bind:
            raise ValueError("bindings are written by bind()")
        p = out.partition
        key = self._keys.partition(p.name)
        compares = [Compare(key, sp.mod_revision), *guard]
        if fenced:
            compares.append(self._leader.fence())
        ops: list[Op] = []
        if out.release or out.delete:
            rel_compares, rel_ops = await self._release_ops(p.name, sp.binding_node)
            compares += rel_compares
            ops += rel_ops
        ops.append(Op.delete(key) if out.delete else Op.put(key, encode(p)))
        ops += await self._events.ops(
            "Partition", p.name, [(n.reason, n.message, n.warning) for n in out.notes])
        res = await self._etcd.txn(compares, ops)
        if not res.succeeded:
            raise Conflict(f"partition {p.name!r} changed concurrently")
        p.revision = res.revision
        return res.revision

    async def _release_ops(self, name: str, node: str) -> tuple[list[Compare], list[Op]]:
        """Drop name's binding and its entry in node's allocation record. The allocation is
        taken from the cache when it has it (the compare on its revision makes a stale copy
        harmless), else read."""
        ops: list[Op] = [Op.delete(self._keys.binding(name))]
        compares: list[Compare] = []
        if not node:
            return compares, ops
        cached = self._cache.allocations.get(node)
        alloc = cached.copy() if cached is not None else await self.allocation(node)
        if name not in alloc.entries and cached is not None:
            alloc = await self.allocation(node)  # the cache may lag behind the bind
        if name in alloc.entries:
            del alloc.entries[name]
            compares.append(Compare(self._keys.allocation(node), alloc.mod_revision))
            ops.append(Op.put(self._keys.allocation(node), alloc.encode()))
        return compares, ops

    async def bind(self, node: str, items: Sequence[tuple[StoredPartition, WriteLike]],
                   alloc: Allocation, guard: NodeGuard | None, *, fenced: bool = True
                   ) -> int | None:
        """Bind the partitions of `items` (outcomes of Placed(node)) to node in one
        transaction, compared on each partition's revision, on the node's allocation record
        as the placement saw it (alloc), on the node's record and lease key as it saw them
        (guard: not cordoned, not lost, not re-registered since), and on the leader fence.
        Adds them to alloc.entries. Returns the revision, or None on conflict (alloc is then
        left as it was)."""
        k = self._keys
        compares = [Compare(k.allocation(node), alloc.mod_revision)]
        if guard is not None:
            compares += [Compare(k.node(node), guard.node_revision),
                         Compare(k.node_lease(node), guard.lease_revision)]
        if fenced:
            compares.append(self._leader.fence())
        ops: list[Op] = []
        added: list[str] = []
        for sp, out in items:
            p = out.partition
            if out.bind != node:
                raise ValueError(f"{p.name}: outcome binds to {out.bind!r}, not {node!r}")
            alloc.entries[p.name] = AllocEntry(p.spec.vcpus, p.spec.memory_bytes,
                                               p.spec.anti_affinity_group)
            added.append(p.name)
            compares.append(Compare(k.partition(p.name), sp.mod_revision))
            ops.append(Op.put(k.partition(p.name), encode(p)))
            ops.append(Op.put(k.binding(p.name), node.encode()))
            ops += await self._events.ops(
                "Partition", p.name, [(n.reason, n.message, n.warning) for n in out.notes])
        ops.append(Op.put(k.allocation(node), alloc.encode()))
        res = await self._etcd.txn(compares, ops)
        if not res.succeeded:
            for name in added:
                alloc.entries.pop(name, None)
            return None
        alloc.mod_revision = res.revision
        return res.revision
