"""The scheduling loop (leader only): place Pending partitions and commit the bindings.

Decisions come from the pure scheduler over a snapshot of the cache; each node's new
bindings are committed in one transaction that compares the partitions' and the node's
allocation revisions, so a stale snapshot can never over-commit a node: the transaction
fails and the next pass sees fresh state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from viridian.v1 import types_pb2 as pb

from controller.cache import ClusterCache
from controller.events import EventRecorder, now_ts
from controller.lifecycle import needs_placement
from controller.loops.base import Loop
from controller.placement import request_for, snapshot_of
from controller.scheduler import BatchPlacer, SchedulerConfig
from controller.store.etcd import Compare, Op
from controller.store.objects import Allocation, ObjectStore, StoredPartition

log = logging.getLogger(__name__)
PER_TXN = 40  # partitions per transaction: 3 ops each, under etcd's 128
IN_FLIGHT = 8  # binding transactions in flight at once (EtcdStore's pool has 8 threads)


@dataclass
class SchedulingStats:
    """Cumulative counters of the loop's passes (for benchmarks and debugging)."""

    passes: int = 0
    decide_s: float = 0.0  # pending list, snapshot, decisions
    commit_s: float = 0.0  # binding and unschedulable transactions
    wait_s: float = 0.0  # waiting for the watch to deliver our own writes
    txns: int = 0
    conflicts: int = 0
    bound: int = 0


class SchedulingLoop(Loop):
    name = "scheduler"

    def __init__(
        self, cache: ClusterCache, store: ObjectStore, events: EventRecorder,
        config: SchedulerConfig,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.store = store
        self.events = events
        self.config = config
        self.stats = SchedulingStats()
        cache.subscribe(self._on_change)

    def _on_change(self, kind: str, name: str) -> None:
        # Pending partitions, capacity changes (nodes, leases, allocations) all matter.
        self.kick()

    async def reconcile(self) -> bool:
        cache = self.cache
        pending = [
            c for name, c in cache.partitions.items()
            if needs_placement(c.partition, name in cache.bindings)
        ]
        if not pending:
            return False
        stats = self.stats
        stats.passes += 1
        t0 = time.perf_counter()
        pending.sort(key=lambda c: (c.partition.status.created_at.ToNanoseconds(),
                                    c.partition.name))
        # Decisions and the compares that guard them must come from the same view: copy the
        # allocation records (with their revisions) together with the snapshot, before any
        # await lets the watch change the cache.
        seen = {n: Allocation(n, dict(a.entries), a.mod_revision)
                for n, a in cache.allocations.items()}
        placer = BatchPlacer(snapshot_of(cache), self.config)
        by_node: dict[str, list[StoredPartition]] = defaultdict(list)
        unplaced: list[tuple[StoredPartition, str]] = []
        for c in pending:
            p = c.partition
            decision = placer.place(request_for(p.name, p.spec, p.status.arch))
            sp = StoredPartition(_copy(p), c.mod_revision)
            if decision.node is None:
                if p.status.reason != decision.reason:
                    unplaced.append((sp, decision.reason))
                continue
            by_node[decision.node].append(sp)
        t1 = time.perf_counter()
        stats.decide_s += t1 - t0
        if not by_node and not unplaced:
            return False
        lease = await self.events.lease_id()
        last_rev = 0
        conflicts = 0

        async def bind_node(node: str, sps: list[StoredPartition]) -> None:
            # One node's batches form a chain: each compares the allocation revision that the
            # previous one wrote (or the snapshot's, for the first), so they run in order.
            nonlocal last_rev, conflicts
            alloc = seen.get(node) or Allocation(node)
            for i in range(0, len(sps), PER_TXN):
                batch = sps[i : i + PER_TXN]
                rev = await self._commit(node, alloc, batch, lease)
                stats.txns += 1
                if rev is None:
                    conflicts += 1
                    stats.conflicts += 1
                    return
                last_rev = max(last_rev, rev)
                alloc.mod_revision = rev
                stats.bound += len(batch)

        async def mark(sp: StoredPartition, reason: str) -> None:
            nonlocal last_rev
            rev = await self._mark_unschedulable(sp, reason, lease)
            stats.txns += 1
            last_rev = max(last_rev, rev)

        # Transactions for different nodes are independent: keep IN_FLIGHT of them going so
        # etcd can batch them into fewer disk syncs. Workers share one iterator of jobs; a
        # node's chain stays with one worker.
        jobs = iter(
            [(bind_node, (node, sps)) for node, sps in by_node.items()]
            + [(mark, (sp, reason)) for sp, reason in unplaced]
        )

        async def worker() -> None:
            for fn, job_args in jobs:
                await fn(*job_args)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(IN_FLIGHT, len(by_node) + len(unplaced))):
                group.create_task(worker())
        t2 = time.perf_counter()
        stats.commit_s += t2 - t1
        if last_rev:
            await cache.wait_for_revision(last_rev)
        stats.wait_s += time.perf_counter() - t2
        return conflicts > 0

    async def _commit(
        self, node: str, alloc: Allocation, sps: list[StoredPartition], lease: int
    ) -> int | None:
        now = now_ts()
        for sp in sps:
            st = sp.partition.status
            st.phase = pb.PARTITION_PHASE_SCHEDULED
            st.node = node
            st.reason = f"scheduled on {node}"
            st.updated_at.CopyFrom(now)
        compares, ops = self.store.bind_ops(sps, alloc)
        for ekey, evalue in self._scheduled_events([sp.partition.name for sp in sps], node):
            ops.append(Op.put(ekey, evalue, lease))
        res = await self.store.etcd.txn(compares, ops)
        if not res.succeeded:
            log.info("binding %d partitions to %s conflicted; retrying", len(sps), node)
            for sp in sps:
                alloc.entries.pop(sp.partition.name, None)
            return None
        return res.revision

    def _scheduled_events(self, names: list[str], node: str) -> list[tuple[str, bytes]]:
        """The "Scheduled" events of one transaction, from one built event as a template.

        EventRecorder.build reads the clock and os.urandom once per event; in the event-loop
        thread each of those syscalls can wait a GIL switch interval behind the etcd and watch
        threads (the top cost when profiling 100k bindings). Here: once per transaction, with
        ids TIME+i-RAND, still unique and in time order.
        """
        message = f"placed on node {node}"
        key, value = self.events.build("Partition", names[0], "Scheduled", message)
        template = pb.Event.FromString(value)
        stamp, _, rand = template.id.partition("-")
        if not stamp.isdigit() or not rand:  # an id format we do not know: build each one
            return [(key, value)] + [
                self.events.build("Partition", n, "Scheduled", message) for n in names[1:]
            ]
        out = [(key, value)]
        base = int(stamp)
        for i, name in enumerate(names[1:], 1):
            template.id = f"{base + i:0{len(stamp)}d}-{rand}"
            template.object = name
            out.append((self.store.keys.event(template.id), template.SerializeToString()))
        return out

    async def _mark_unschedulable(self, sp: StoredPartition, reason: str, lease: int) -> int:
        keys = self.store.keys
        p = sp.partition
        p.status.reason = reason
        p.status.updated_at.CopyFrom(now_ts())
        ekey, evalue = self.events.build(
            "Partition", p.name, "FailedScheduling", reason, warning=True
        )
        res = await self.store.etcd.txn(
            [Compare(keys.partition(p.name), sp.mod_revision)],
            [Op.put(keys.partition(p.name), p.SerializeToString()), Op.put(ekey, evalue, lease)],
        )
        return res.revision if res.succeeded else 0


def _copy(p: pb.Partition) -> pb.Partition:
    out = pb.Partition()
    out.CopyFrom(p)
    out.ClearField("revision")
    return out
