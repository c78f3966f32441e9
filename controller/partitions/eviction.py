"""Node lifecycle (leader only): a node whose lease expired is marked NotReady; once its
grace has passed, an eviction is recorded for it (evictions/NODE) and carried out: each
partition bound there restarts elsewhere when HA (cold start), else becomes Lost. A new
leader resumes a recorded eviction where the old one stopped.

Why a grace: an agent fences itself (stops its partitions) before its lease can expire
(it stops at the send time of its last acknowledged heartbeat + TTL - margin, and a
controller acknowledges only after renewing the lease after that heartbeat arrived), so by
the time the lease is gone plus HA_GRACE_S, the old copy is gone and a restart elsewhere
cannot make two. The grace counts from when this leader first saw the node silent: a new
leader never inherits an old clock.

Every eviction is one transaction per partition, compared on the node's lease key being
absent and on the leader fence: a node that re-registered in between, or a leader that lost
its lease, changes nothing.

When more than half of the nodes that matter (alive, or silent with partitions to evict) go
silent together, the likelier culprit is the control plane (etcd or the controllers were
unreachable), not the nodes: nothing is evicted until enough are back, as Kubernetes'
zone-aware eviction decides. Nodes that are dead and empty (already evicted, or removed with
`viridian node rm`) do not count, so a permanently dead node never latches the hold; and when
a hold ends, every still-silent node gets a fresh grace instead of being evicted at once.

A hold ends only once most nodes are back *and* none has come back for RETURNS_SETTLE_S.
After a replica dies, its thousands of agents come back over tens of seconds (a busy replica
books them in, gateway/admission.py: it told them when to come back), so "most back" is not
the end of the return: ending the hold there evicted the stragglers a grace later and their
partitions ended Lost (5,000 agents, 100,000 partitions). As Kubernetes slows evictions
while a zone is partially disrupted, this waits until the returns stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from viridian.v1 import types_pb2 as pb

from controller.errors import Conflict, NotFound
from controller.loops.base import Loop
from controller.partitions.actions import PartitionActions
from controller.partitions.machine import NodeLost, phase_name
from controller.store import Store, now_ts

log = logging.getLogger(__name__)
OP = pb.NodeOperation
HA_GRACE_S = 1.0
MASS_LOSS_FRACTION = 0.5
RETURNS_SETTLE_S = 5.0
MARKS_IN_FLIGHT = 64
NOT_READY_REASON = "node lease expired: the agent's session lapsed"


class NodeLifecycleLoop(Loop):
    name = "node-lifecycle"
    resync_s = 0.5
    # A pass looks at every node; with thousands registering it was kicked by each one
    # (13% of a replica's CPU at 5,000 agents). Silence is timed in HA_GRACE_S anyway.
    min_interval_s = 0.2

    def __init__(self, store: Store, actions: PartitionActions,
                 clock: Callable[[], float] = time.monotonic, grace_s: float = HA_GRACE_S
                 ) -> None:
        super().__init__()
        self.store = store
        self.cache = store.cache
        self.actions = actions
        self.clock = clock
        self.grace_s = grace_s
        self._silent_since: dict[str, float] = {}
        self.holding = False
        self._last_return = float("-inf")   # when a silent node last came back
        self._hold_changed = False
        self._counts = (0, 0)  # (silent nodes with partitions, nodes that count)
        self.cache.subscribe(self._on_change)

    def _on_change(self, kind: str, name: str) -> None:
        # A live node's record or allocation changing (every bind changes one) concerns a
        # pass only if the node is silent: kicked by each, the pass (O(nodes)) ran five
        # times a second while 5,000 nodes were filling up (14% of the replica).
        if kind in ("nodes", "allocations") and self.cache.node_alive(name):
            return
        if kind in ("", "nodes", "node-leases", "allocations", "evictions"):
            self.kick()

    def start(self) -> None:
        self.reset_term()
        super().start()

    def reset_term(self) -> None:
        """A new term of leadership: no silence observed yet, no hold in force."""
        self._silent_since.clear()
        self.holding = False
        self._last_return = float("-inf")

    def evictable(self) -> set[str]:
        """Silent nodes with partitions whose grace has passed, unless a hold is in force
        (updates the silence clocks and the hold)."""
        cache = self.cache
        now = self.clock()
        silent = {n for n in cache.nodes if not cache.node_alive(n)}
        for n in list(self._silent_since):
            if n not in silent:
                del self._silent_since[n]
                self._last_return = now
        for n in silent:
            self._silent_since.setdefault(n, now)
        with_work = {n for n in silent if cache.bound_to(n)}
        counted = {n for n in cache.nodes if cache.node_alive(n)} | with_work
        mass = len(counted) > 1 and len(with_work) > len(counted) * MASS_LOSS_FRACTION
        returning = now - self._last_return < RETURNS_SETTLE_S
        holding = mass or (self.holding and returning)
        if self.holding and not holding:
            for n in silent:  # back from a hold: every silent node gets a fresh grace
                self._silent_since[n] = now
        self._hold_changed = holding != self.holding
        self.holding = holding
        self._counts = (len(with_work), len(counted))
        if holding:
            return set()
        return {n for n in with_work if now - self._silent_since[n] >= self.grace_s}

    async def reconcile(self) -> bool:
        cache = self.cache
        again = False
        await self._mark_not_ready([
            name for name, node in cache.nodes.items()
            if not cache.node_alive(name) and node.status.state != pb.NODE_STATE_NOT_READY])
        evictable = self.evictable()
        if self._hold_changed:
            silent, counted = self._counts
            if self.holding:
                await self.store.events.record(
                    "Controller", "node-lifecycle", "EvictionsHeld",
                    f"{silent} of {counted} nodes went silent together: the control plane is "
                    "the likelier fault; holding evictions until most nodes are back",
                    warning=True)
            else:
                await self.store.events.record(
                    "Controller", "node-lifecycle", "EvictionsResumed",
                    f"most nodes are back and none came back in the last "
                    f"{RETURNS_SETTLE_S:g}s; silent nodes get a fresh grace before eviction")
        for name in sorted(evictable):
            op, rev = cache.evictions.get(name, (None, 0))
            if op is None or op.state != OP.STATE_RUNNING:
                await self._begin(name, rev)
                again = True
        if self.holding:
            return again
        for name, (op, rev) in list(cache.evictions.items()):
            if op.state == OP.STATE_RUNNING:
                try:
                    again |= await self._carry_out(op, rev)
                except Conflict as err:
                    log.info("eviction of %s: %s", name, err)
                    again = True
        return again

    async def _mark_not_ready(self, names: list[str]) -> None:
        """Mark these silent nodes NotReady, MARKS_IN_FLIGHT at a time so that group commit
        carries them together: when a replica dies, every node it held goes silent at once,
        and one transaction after another took the new leader 10 s for 5,000 nodes (while
        they were registering again)."""
        slots = asyncio.Semaphore(MARKS_IN_FLIGHT)

        async def mark(name: str) -> None:
            async with slots:
                await self.store.nodes.mark_not_ready(name, NOT_READY_REASON)

        for outcome in await asyncio.gather(*map(mark, names), return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _begin(self, node: str, rev: int) -> None:
        op = OP(kind=OP.KIND_EVICTION, node=node, state=OP.STATE_RUNNING, started_at=now_ts(),
                pending=self.cache.bound_to(node), reason=NOT_READY_REASON,
                message=f"evicting {len(self.cache.bound_to(node))} partition(s)")
        try:
            await self.store.nodes.put_operation(
                op, rev, fenced=True,
                notes=[("EvictionStarted", f"node lost ({NOT_READY_REASON}); evicting "
                        f"{len(op.pending)} partition(s)", True)])
        except Conflict as err:
            log.info("recording the eviction of %s: %s", node, err)

    async def _carry_out(self, op: pb.NodeOperation, rev: int) -> bool:
        """One pass over a running eviction; True if it must run again."""
        node = op.node
        done = pb.NodeOperation()
        done.CopyFrom(op)
        if self.cache.node_alive(node) and await self.store.nodes.alive(node):
            done.state = OP.STATE_CANCELLED
            done.message = "the node came back before everything was evicted"
            done.finished_at.CopyFrom(now_ts())
            await self.store.nodes.put_operation(
                done, rev, fenced=True, notes=[("EvictionCancelled", done.message, False)])
            return False
        names = sorted(set(op.pending) | set(self.cache.bound_to(node)))
        remaining: list[str] = []
        for name in names:
            try:
                out = await self.actions.apply_at(
                    name, node, 0, NodeLost(node), fenced=True,
                    guard=[self.store.nodes.lease_absent(node)])
            except NotFound:
                done.done[name] = "deleted"
                continue
            except Conflict:
                remaining.append(name)  # the lease is back, or leadership is lost
                continue
            if out.release:
                st = out.partition.status
                done.done[name] = (f"{phase_name(st.phase)}: restarting elsewhere (HA)"
                                   if st.phase == pb.PARTITION_PHASE_PENDING
                                   else phase_name(st.phase))
            elif name not in done.done:
                done.done[name] = "no longer bound to the node"
        del done.pending[:]
        done.pending.extend(remaining)
        if not remaining:
            done.state = OP.STATE_COMPLETED
            done.finished_at.CopyFrom(now_ts())
            done.message = f"{len(done.done)} partition(s) released from the lost node"
        if done == op:
            return bool(remaining)
        await self.store.nodes.put_operation(
            done, rev, fenced=True,
            notes=[("EvictionCompleted", done.message, False)] if not remaining else None)
        return bool(remaining)
