"""Node lifecycle (leader only): a node whose lease expired becomes NotReady, and what was
bound to it becomes Lost, or Pending again when it is HA (cold restart elsewhere)."""

from __future__ import annotations

import logging

from viridian.v1 import types_pb2 as pb

from controller.cache import ClusterCache
from controller.errors import Conflict
from controller.events import EventRecorder, now_ts
from controller.loops.base import Loop
from controller.store.etcd import Compare, Op
from controller.store.objects import ObjectStore, StoredPartition

log = logging.getLogger(__name__)


class NodeLifecycleLoop(Loop):
    name = "node-lifecycle"

    def __init__(self, cache: ClusterCache, store: ObjectStore, events: EventRecorder) -> None:
        super().__init__()
        self.cache = cache
        self.store = store
        self.events = events
        cache.subscribe(self._on_change)

    def _on_change(self, kind: str, name: str) -> None:
        if kind in ("", "nodes", "node-leases", "partitions"):
            self.kick()

    async def reconcile(self) -> bool:
        cache = self.cache
        again = False
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
