"""The scheduling loop (leader only): place Pending partitions and commit the bindings.

Decisions come from the pure scheduler over a snapshot of the cache; each node's new
bindings are committed in one transaction that compares the partitions' and the node's
allocation revisions, so a stale snapshot can never over-commit a node: the transaction
fails and the next pass sees fresh state.

A pass costs what changed since the last one, not the cluster's size: it looks only at the
partitions the cache said changed (and those still waiting for a node), and its snapshot
rebuilds only the nodes that changed (placement.SnapshotSource). Every FULL_SCAN_S it looks
at everything again, as a level-triggered loop should, in case a notice was ever missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.errors import Conflict
from controller.loops.base import Loop
from controller.partitions.actions import view_of
from controller.partitions.machine import Outcome, Placed, Unplaceable, needs_placement, transition
from controller.placement import SnapshotSource, request_for
from controller.scheduler import BatchPlacer, SchedulerConfig
from controller.store import (
    Allocation,
    CachedPartition,
    NodeGuard,
    Store,
    StoredPartition,
    now_ts,
)

if TYPE_CHECKING:
    from controller.metrics import ControllerMetrics

log = logging.getLogger(__name__)
PER_TXN = 30  # partitions per transaction: 3 ops + 1 event each, under etcd's 128
IN_FLIGHT = 8  # binding transactions in flight at once
YIELD_EVERY = 200  # decisions between two turns of the event loop (~10-30 ms of work)
FULL_SCAN_S = 30.0  # a pass over every partition and node at least this often


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
    examined: int = 0  # partitions looked at (changed, or still waiting for a node)


class SchedulingLoop(Loop):
    """Places Pending partitions. Leader only: its writes carry the leader fence (`fenced`
    False only for tests that race two schedulers on purpose)."""

    name = "scheduler"

    def __init__(self, store: Store, config: SchedulerConfig, fenced: bool = True) -> None:
        super().__init__()
        self.store = store
        self.cache = store.cache
        self.config = config
        self.fenced = fenced
        self.stats = SchedulingStats()
        self.metrics: ControllerMetrics | None = None   # set by the replica
        self.snapshots = SnapshotSource(self.cache)
        #: partitions to look at in the next pass: those changed since the last one and
        #: those still waiting for a node; None: every partition
        self._candidates: set[str] | None = None
        self._full_scan_at = 0.0
        self.cache.subscribe(self._on_change)

    def start(self) -> None:
        # A new term of leadership: look at everything once (nothing was kept meanwhile).
        self._candidates = None
        self.snapshots.reset()
        super().start()

    def _on_change(self, kind: str, name: str) -> None:
        # Pending partitions, capacity changes (nodes, leases, allocations) all matter.
        if not kind or not self.running:
            self._candidates = None   # (a follower keeps no list of changes)
        elif kind == "partitions" and self._candidates is not None:
            self._candidates.add(name)
        self.kick()

    def _pending(self) -> tuple[list[CachedPartition], bool]:
        """The partitions waiting for a node, and whether every partition was looked at
        (then the snapshot is rebuilt whole too). From here on the candidates are these,
        plus whatever the cache reports changed meanwhile."""
        cache = self.cache
        now = time.monotonic()
        if now - self._full_scan_at >= FULL_SCAN_S:
            self._candidates = None
        full = self._candidates is None
        if full:
            self._full_scan_at = now
        names = cache.partitions.keys() if self._candidates is None else self._candidates
        pending = []
        self.stats.examined += len(names)
        for name in names:
            c = cache.partitions.get(name)
            if c is not None and needs_placement(c.partition, name in cache.bindings):
                pending.append(c)
        self._candidates = {c.partition.name for c in pending}
        return pending, full

    async def reconcile(self) -> bool:
        cache = self.cache
        pending, full = self._pending()
        if not pending:
            return False
        stats = self.stats
        stats.passes += 1
        t0 = time.perf_counter()
        pending.sort(key=lambda c: (c.partition.status.created_at.ToNanoseconds(),
                                    c.partition.name))
        # Decisions and the compares that guard them must come from the same view: copy the
        # allocation records and the nodes' revisions with the snapshot, before any await
        # lets the watch change the cache.
        # (References to the cache's records, which it replaces rather than changes; copied
        # for the nodes that get decisions.)
        seen = dict(cache.allocations)
        nodes = dict(cache.nodes)
        leases = dict(cache.node_leases)
        placer = BatchPlacer(self.snapshots.snapshot(full=full), self.config)
        now = now_ts()
        by_node: dict[str, list[tuple[StoredPartition, Outcome]]] = defaultdict(list)
        unplaced: list[tuple[StoredPartition, Outcome]] = []
        for i, c in enumerate(pending):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                # Let the loop breathe: heartbeats must be acked while a large pass decides
                # (the decisions use the snapshot and the revisions copied above, so what
                # the watch changes meanwhile only makes a commit's compare fail).
                await asyncio.sleep(0)
            p = c.partition
            decision = placer.place(request_for(p.name, p.spec, p.status.arch,
                                                 p.status.target_node))
            sp = StoredPartition(p, c.mod_revision)
            if decision.node is None:
                out = transition(view_of(sp), Unplaceable(decision.reason), now)
                if out.write:
                    unplaced.append((sp, out))
                continue
            by_node[decision.node].append((sp, transition(view_of(sp), Placed(decision.node),
                                                          now)))
        t1 = time.perf_counter()
        stats.decide_s += t1 - t0
        if not by_node and not unplaced:
            return False
        last_rev = 0
        conflicts = 0
        bound_before = stats.bound
        conflicted = 0

        async def bind_node(node: str, items: list[tuple[StoredPartition, Outcome]]) -> None:
            # One node's batches form a chain: each compares the allocation revision that the
            # previous one wrote (or the snapshot's, for the first), so they run in order.
            nonlocal last_rev, conflicts, conflicted
            record = seen.get(node)
            alloc = record.copy() if record is not None else Allocation(node)
            guard = NodeGuard(nodes[node].revision, leases[node].mod_revision) \
                if node in nodes and node in leases else None
            for i in range(0, len(items), PER_TXN):
                batch = items[i : i + PER_TXN]
                rev = await self.store.partitions.bind(node, batch, alloc, guard,
                                                       fenced=self.fenced)
                stats.txns += 1
                if rev is None:
                    log.info("binding %d partitions to %s conflicted; retrying", len(batch),
                             node)
                    conflicts += 1
                    conflicted += len(items) - i
                    stats.conflicts += 1
                    return
                last_rev = max(last_rev, rev)
                stats.bound += len(batch)

        async def mark(sp: StoredPartition, out: Outcome) -> None:
            nonlocal last_rev
            stats.txns += 1
            try:
                last_rev = max(last_rev, await self.store.partitions.apply(
                    sp, out, fenced=self.fenced))
            except Conflict:
                pass  # changed meanwhile: the next pass decides again

        # Transactions for different nodes are independent: keep IN_FLIGHT of them going so
        # etcd can batch them into fewer disk syncs. Workers share one iterator of jobs; a
        # node's chain stays with one worker.
        jobs = iter(
            [(bind_node, (node, items)) for node, items in by_node.items()]
            + [(mark, job) for job in unplaced]
        )

        async def worker() -> None:
            for fn, job_args in jobs:
                await fn(*job_args)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(IN_FLIGHT, len(by_node) + len(unplaced))):
                group.create_task(worker())
        t2 = time.perf_counter()
        stats.commit_s += t2 - t1
        if self.metrics is not None:
            m = self.metrics
            m.scheduling_seconds.observe(t2 - t0)
            m.scheduling_attempts.labels("placed").inc(stats.bound - bound_before)
            m.scheduling_attempts.labels("unschedulable").inc(len(unplaced))
            m.scheduling_attempts.labels("conflict").inc(conflicted)
        if last_rev:
            await cache.wait_for_revision(last_rev)
        stats.wait_s += time.perf_counter() - t2
        return conflicts > 0
