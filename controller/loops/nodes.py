"""Node lifecycle (leader only): a node whose lease expired becomes NotReady, and what was
bound to it becomes Lost, or Pending again when it is HA (cold restart elsewhere)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from viridian.v1 import types_pb2 as pb

from controller.cache import ClusterCache
from controller.errors import Conflict
from controller.events import EventRecorder, now_ts
from controller.loops.base import Loop
from controller.store.etcd import Compare, Op
from controller.store.objects import ObjectStore, StoredPartition

log = logging.getLogger(__name__)


HA_GRACE_S = 1.0  # after a lease lapses, before an HA partition restarts elsewhere
MASS_LOSS_FRACTION = 0.5  # more than this share of nodes silent at once: suspect ourselves


class NodeLifecycleLoop(Loop):
    """Marks nodes NotReady and evicts what they ran.

    Evictions wait HA_GRACE_S after the node was first seen without a lease: the agent
    fences itself (stops its partitions) when it has not heard from a controller for the
    lease TTL, so by then the old copy is gone and a restart elsewhere cannot make two.

    When more than half the nodes go silent together, the likelier culprit is the control
    plane (etcd or the controllers were unreachable), not the nodes: nothing is evicted
    until enough nodes are back (Kubernetes' zone-aware eviction makes the same call).
    """

    name = "node-lifecycle"
    resync_s = 0.5

    def __init__(
        self, cache: ClusterCache, store: ObjectStore, events: EventRecorder,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.store = store
        self.events = events
        self.clock = clock
        self._silent_since: dict[str, float] = {}
        self._holding = False
        cache.subscribe(self._on_change)

    def _on_change(self, kind: str, name: str) -> None:
        if kind in ("", "nodes", "node-leases", "partitions"):
            self.kick()

    def _evictable(self) -> set[str]:
        """Silent nodes whose grace has passed, unless a mass loss is suspected."""
        now = self.clock()
        nodes = self.cache.nodes
        silent = {n for n in nodes if not self.cache.node_alive(n)}
        for n in list(self._silent_since):
            if n not in silent:
                del self._silent_since[n]
        for n in silent:
            self._silent_since.setdefault(n, now)
        if len(nodes) > 1 and len(silent) > len(nodes) * MASS_LOSS_FRACTION:
            return set()
        return {n for n in silent if now - self._silent_since[n] >= HA_GRACE_S}

    async def reconcile(self) -> bool:
        cache = self.cache
        again = False
        nodes, silent = len(cache.nodes), sum(1 for n in cache.nodes
                                              if not cache.node_alive(n))
        evictable = self._evictable()
        holding = nodes > 1 and silent > nodes * MASS_LOSS_FRACTION
        if holding and not self._holding:
            await self.events.record(
                "Controller", "node-lifecycle", "EvictionsHeld",
                f"{silent} of {nodes} nodes went silent together: the control plane is the "
                "likelier fault; holding evictions until most nodes are back", warning=True,
            )
        elif self._holding and not holding:
            await self.events.record("Controller", "node-lifecycle", "EvictionsResumed",
                                     "most nodes are back; evicting from silent nodes again")
        self._holding = holding
        for name, node in list(cache.nodes.items()):
            if cache.node_alive(name) or node.status.state == pb.NODE_STATE_NOT_READY:
                continue
            try:
                await self._mark_not_ready(name)
            except Conflict:
                again = True
        for pname, binding in list(cache.bindings.items()):
            node_name = binding.value.decode()
            bound_to = cache.nodes.get(node_name)
            if cache.node_alive(node_name):
                continue
            if bound_to is not None and bound_to.status.state != pb.NODE_STATE_NOT_READY:
                continue  # marked above; the watch brings the new state on the next pass
            if node_name not in evictable and bound_to is not None:
                continue  # still in its grace period, or evictions are held
            try:
                await self._evict(pname, node_name)
            except Conflict:
                again = True
        return again

    async def _mark_not_ready(self, name: str) -> None:
        node, rev = await self.store.get_node(name)
        node.status.state = pb.NODE_STATE_NOT_READY
        node.status.reason = "node lease expired: the agent's session lapsed"
        node.ClearField("revision")
        keys = self.store.keys
        # Only while the lease key is still absent: a re-registration wins.
        res = await self.store.etcd.txn(
            [Compare(keys.node(name), rev), Compare(keys.node_lease(name), 0)],
            [Op.put(keys.node(name), node.SerializeToString())],
        )
        if not res.succeeded:
            return
        await self.events.record("Node", name, "NodeNotReady", node.status.reason, warning=True)

    async def _evict(self, pname: str, node: str) -> None:
        sp: StoredPartition = await self.store.get_partition(pname)
        if sp.binding_node != node:
            return
        p = sp.partition
        now = now_ts()
        p.status.updated_at.CopyFrom(now)
        if p.spec.ha and p.spec.desired_state == pb.DESIRED_STATE_RUNNING:
            p.status.phase = pb.PARTITION_PHASE_PENDING
            p.status.restarts += 1
            p.status.reason = f"node {node} lost; restarting elsewhere (HA, cold start)"
            reason = "HARestart"
        else:
            p.status.phase = pb.PARTITION_PHASE_LOST
            p.status.reason = f"node {node} lost; start it again to run it elsewhere"
            reason = "NodeLost"
        await self.store.release(sp)
        await self.events.record("Partition", pname, reason, p.status.reason, warning=True)
