"""Nodes in etcd: registration with the node's lease, NotReady marks, cordons, removal, and
the node operations (drains, evictions) recorded for the leader to carry out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from viridian.v1 import types_pb2 as pb

from controller.errors import Conflict, FailedPrecondition, NotFound, StoreError
from controller.store.etcd import KV, Compare, EtcdStore, Op
from controller.store.events import EventStore, now_ts
from controller.store.keys import Keys
from controller.store.leader import LeaderStore
from controller.store.records import Allocation, decode, encode
from controller.store.scan import ScanPage, between, scan

log = logging.getLogger(__name__)
RETRIES = 8
OP_KEYS = {pb.NodeOperation.KIND_DRAIN: "drain", pb.NodeOperation.KIND_EVICTION: "eviction"}


@dataclass(frozen=True)
class Registration:
    """One node's registration: its spec and how many partitions it re-adopts."""

    name: str
    spec: pb.NodeSpec
    adopted: int


class NodeStore:
    def __init__(self, etcd: EtcdStore, keys: Keys, events: EventStore,
                 leader: LeaderStore) -> None:
        self._etcd = etcd
        self._keys = keys
        self._events = events
        self._leader = leader

    async def get(self, name: str) -> pb.Node:
        kv = await self._etcd.get(self._keys.node(name))
        if kv is None:
            raise NotFound(f"node {name!r} not found")
        node = decode(pb.Node, kv.value)
        node.revision = kv.mod_revision
        return node

    async def read_all(self) -> list[pb.Node]:
        kvs, _ = await self._etcd.get_prefix_paged(self._keys.nodes)
        out = []
        for kv in kvs:
            node = decode(pb.Node, kv.value)
            node.revision = kv.mod_revision
            out.append(node)
        return out

    async def page(self, *, after: str = "", revision: int = 0, want: int
                   ) -> tuple[ScanPage[pb.Node], dict[str, Allocation], set[str]]:
        """One page of nodes by name (see store.scan) with, at the same revision, their
        allocation records and which of them hold a lease (are alive)."""

        def pick(kv: KV) -> pb.Node:
            node = decode(pb.Node, kv.value)
            node.revision = kv.mod_revision
            return node

        page = await scan(self._etcd, self._keys.nodes, after=after, revision=revision,
                          want=want, pick=pick)
        if not page.items:
            return page, {}, set()
        first, last = page.items[0].name, page.items[-1].name
        allocs = await between(self._etcd, self._keys.allocations, first, last, page.revision)
        leases = await between(self._etcd, self._keys.node_leases, first, last, page.revision)
        return (page, {n: Allocation.decode(n, kv) for n, kv in allocs.items()},
                set(leases))

    async def alive(self, name: str) -> bool:
        """Whether the node's lease key exists now (read from etcd, not a cache)."""
        return await self._etcd.get(self._keys.node_lease(name)) is not None

    async def session_holder(self, name: str) -> str:
        """Address of the replica holding the node's session ("" if none)."""
        kv = await self._etcd.get(self._keys.node_lease(name))
        return kv.value.decode() if kv is not None else ""

    async def alive_names(self) -> set[str]:
        kvs, _ = await self._etcd.get_prefix_paged(self._keys.node_leases)
        return {Keys.name_of(kv.key) for kv in kvs}

    async def allocations(self) -> dict[str, Allocation]:
        kvs, _ = await self._etcd.get_prefix_paged(self._keys.allocations)
        return {Keys.name_of(kv.key): Allocation.decode(Keys.name_of(kv.key), kv) for kv in kvs}

    async def allocation(self, name: str) -> Allocation:
        return Allocation.decode(name, await self._etcd.get(self._keys.allocation(name)))

    # -- registration and liveness -----------------------------------------------------

    async def register(self, name: str, spec: pb.NodeSpec, holder: str, lease: int,
                       adopted: int) -> tuple[int, bool]:
        """Put the node (Ready) and its lease key (naming the replica `holder`, attached to
        that replica's node lease `lease`) in one transaction: never Ready without a lease
        key. Returns (claim, first registration): the claim is the revision of this lease
        key, which only the session it belongs to may delete (``release``). A lease key of
        another replica's (the node moved) is simply replaced: that replica sees its claim
        superseded and ends its stale session."""
        kv = await self._etcd.get(self._keys.node(name))
        compare, ops, fresh = await self._registration(
            Registration(name, spec, adopted), kv, holder, lease)
        res = await self._etcd.txn([compare], ops)
        if not res.succeeded:
            raise Conflict(f"node {name!r} changed during registration; retry")
        return res.revision, fresh

    async def register_many(self, batch: Sequence[Registration], holder: str, lease: int
                            ) -> list[tuple[int, bool] | StoreError]:
        """``register`` for several nodes (distinct names) in one read and one transaction:
        at thousands of agents registering at once, a transaction each was most of a
        replica's work. When any node changed between the read and the write, each is
        registered on its own, so one conflict costs only its own node. Returns, in order,
        (claim, first registration) or the error of that node."""
        if len(batch) == 1:
            one = batch[0]
            try:
                return [await self.register(one.name, one.spec, holder, lease, one.adopted)]
            except StoreError as err:
                return [err]
        if len({r.name for r in batch}) != len(batch):
            raise ValueError("a registration batch names a node twice")
        kvs = await self._etcd.get_many([self._keys.node(r.name) for r in batch])
        compares, ops, fresh = [], [], []
        for r, kv in zip(batch, kvs, strict=True):
            compare, node_ops, first = await self._registration(r, kv, holder, lease)
            compares.append(compare)
            ops.extend(node_ops)
            fresh.append(first)
        res = await self._etcd.txn(compares, ops)
        if res.succeeded:
            return [(res.revision, first) for first in fresh]
        out: list[tuple[int, bool] | StoreError] = []
        for r in batch:
            try:
                out.append(await self.register(r.name, r.spec, holder, lease, r.adopted))
            except StoreError as err:
                out.append(err)
        return out

    async def _registration(self, r: Registration, kv: KV | None, holder: str, lease: int
                            ) -> tuple[Compare, list[Op], bool]:
        """The guard and the writes that register node `r` over its record `kv`."""
        k = self._keys
        fresh = kv is None
        node = pb.Node(name=r.name) if kv is None else decode(pb.Node, kv.value)
        cordoned = node.spec.cordoned
        node.spec.CopyFrom(r.spec)
        node.spec.cordoned = cordoned
        node.status.state = pb.NODE_STATE_READY
        node.status.reason = ""
        now = now_ts()
        node.status.last_heartbeat.CopyFrom(now)
        if fresh:
            node.status.registered_at.CopyFrom(now)
        events = await self._events.ops("Node", r.name, [(
            "Registered" if fresh else "NodeReady",
            f"{r.spec.vcpus} vCPUs, {r.spec.memory_bytes >> 20}Mi, {r.adopted} partitions "
            f"re-adopted (session on {holder})", False)])
        return (Compare(k.node(r.name), kv.mod_revision if kv is not None else 0),
                [Op.put(k.node(r.name), encode(node)),
                 Op.put(k.node_lease(r.name), holder.encode(), lease), *events], fresh)

    async def release(self, name: str, claim: int) -> bool:
        """Delete the node's lease key if it is still the one written at revision `claim`
        (no later registration replaced it): the node is lost. True if deleted."""
        key = self._keys.node_lease(name)
        res = await self._etcd.txn([Compare(key, claim)], [Op.delete(key)])
        return res.succeeded

    async def mark_not_ready(self, name: str, reason: str) -> bool:
        """Leader: mark the node NotReady while its lease key is still absent (a
        re-registration always wins). True if written."""
        k = self._keys
        kv = await self._etcd.get(k.node(name))
        if kv is None:
            return False
        node = decode(pb.Node, kv.value)
        if node.status.state == pb.NODE_STATE_NOT_READY:
            return False
        node.status.state = pb.NODE_STATE_NOT_READY
        node.status.reason = reason
        events = await self._events.ops("Node", name, [("NodeNotReady", reason, True)])
        res = await self._etcd.txn(
            [Compare(k.node(name), kv.mod_revision), Compare(k.node_lease(name), 0),
             self._leader.fence()],
            [Op.put(k.node(name), encode(node)), *events])
        return res.succeeded

    async def set_cordon(self, name: str, cordoned: bool) -> bool:
        """Cordon or uncordon; True if it changed."""
        key = self._keys.node(name)
        for _ in range(RETRIES):
            node = await self.get(name)
            if node.spec.cordoned == cordoned:
                return False
            node.spec.cordoned = cordoned
            events = await self._events.ops("Node", name, [(
                "Cordoned" if cordoned else "Uncordoned",
                "no new placements" if cordoned else "accepting placements again", False)])
            res = await self._etcd.txn([Compare(key, node.revision)],
                                       [Op.put(key, encode(node)), *events])
            if res.succeeded:
                return True
        raise Conflict(f"node {name!r} kept changing; try again")

    async def remove(self, name: str) -> None:
        """Delete a node that is not alive and has nothing bound: its record, allocation
        record and operations, compared so that a registration or a bind in between wins."""
        k = self._keys
        kv = await self._etcd.get(k.node(name))
        if kv is None:
            raise NotFound(f"node {name!r} not found")
        alloc = await self.allocation(name)
        if alloc.entries:
            raise FailedPrecondition(
                f"node {name!r} still holds partitions: {', '.join(sorted(alloc.entries)[:10])}")
        events = await self._events.ops("Node", name, [("Removed", "removed for good", False)])
        res = await self._etcd.txn(
            [Compare(k.node(name), kv.mod_revision), Compare(k.node_lease(name), 0),
             Compare(k.allocation(name), alloc.mod_revision)],
            [Op.delete(k.node(name)), Op.delete(k.allocation(name)), Op.delete(k.drain(name)),
             Op.delete(k.eviction(name)), *events])
        if not res.succeeded:
            raise Conflict(f"node {name!r} changed while being removed (it registered again, "
                           "or a partition was bound to it); try again")

    # -- operations ----------------------------------------------------------------------

    def _op_key(self, kind: int, node: str) -> str:
        return (self._keys.drain(node) if kind == pb.NodeOperation.KIND_DRAIN
                else self._keys.eviction(node))

    async def operation(self, kind: int, node: str) -> tuple[pb.NodeOperation | None, int]:
        kv = await self._etcd.get(self._op_key(kind, node))
        if kv is None:
            return None, 0
        return decode(pb.NodeOperation, kv.value), kv.mod_revision

    async def put_operation(self, op: pb.NodeOperation, revision: int, *, fenced: bool,
                            notes: list[tuple[str, str, bool]] | None = None) -> int:
        """Write a node operation compared on the revision it was read at (0 = new);
        leader-only steps are fenced. Returns the new revision."""
        key = self._op_key(op.kind, op.node)
        compares = [Compare(key, revision)]
        if fenced:
            compares.append(self._leader.fence())
        events = await self._events.ops("Node", op.node, notes or [])
        res = await self._etcd.txn(compares, [Op.put(key, op.SerializeToString()), *events])
        if not res.succeeded:
            raise Conflict(f"the {OP_KEYS.get(op.kind, 'operation')} of node {op.node!r} "
                           "changed concurrently")
        return res.revision

    def lease_absent(self, name: str) -> Compare:
        """A guard for writes that are only safe while the node has no lease (lost)."""
        return Compare(self._keys.node_lease(name), 0)
