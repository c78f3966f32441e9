"""Public API: nodes (list, get, cordon, uncordon, drain)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.errors import Conflict
from controller.grpc_errors import Context, map_errors, map_stream_errors
from controller.lifecycle import HOLDING
from controller.placement import (
    DEFAULT_CPU_RATIO,
    DEFAULT_MEMORY_RATIO,
    request_for,
    snapshot_of,
)
from controller.reports import SAVE_FAILED
from controller.scheduler import capacity_plan
from controller.store.objects import Allocation, StoredPartition

P = pb
DRAIN_POLL_S = 0.25


def with_usage(node: pb.Node, alloc: Allocation | None, alive: bool) -> pb.Node:
    st = node.status
    if not alive:
        st.state = P.NODE_STATE_NOT_READY
    st.allocated_vcpus = alloc.vcpus if alloc else 0
    st.allocated_memory_bytes = alloc.memory_bytes if alloc else 0
    st.partitions = len(alloc.entries) if alloc else 0
    cpu = node.spec.cpu_allocation_ratio or DEFAULT_CPU_RATIO
    mem = node.spec.memory_allocation_ratio or DEFAULT_MEMORY_RATIO
    st.allocatable_vcpus = int(node.spec.vcpus * cpu)
    st.allocatable_memory_bytes = int(node.spec.memory_bytes * mem)
    return node


class NodesApi:
    ctx: ApiContext

    async def _node(self, name: str) -> pb.Node:
        node, _ = await self.ctx.store.get_node(name)
        alloc = await self.ctx.store.get_allocation(name)
        alive = await self.ctx.store.etcd.get(self.ctx.store.keys.node_lease(name)) is not None
        return with_usage(node, alloc, alive)

    @map_errors
    async def ListNodes(
        self, request: cpb.ListNodesRequest, context: Context
    ) -> cpb.ListNodesResponse:
        store = self.ctx.store
        nodes = await store.list_nodes()
        allocs = await store.list_allocations()
        leases, _ = await store.etcd.get_prefix(store.keys.node_leases)
        alive = {store.keys.name_of(kv.key) for kv in leases}
        return cpb.ListNodesResponse(
            nodes=[with_usage(n, allocs.get(n.name), n.name in alive) for n in nodes]
        )

    @map_errors
    async def GetNode(
        self, request: cpb.GetNodeRequest, context: Context
    ) -> pb.Node:
        return await self._node(request.name)

    async def _set_cordon(self, name: str, cordoned: bool) -> pb.Node:
        for _ in range(8):
            node, rev = await self.ctx.store.get_node(name)
            if node.spec.cordoned == cordoned:
                break
            node.spec.cordoned = cordoned
            try:
                await self.ctx.store.put_node(node, rev)
            except Conflict:
                continue
            await self.ctx.events.record(
                "Node", name, "Cordoned" if cordoned else "Uncordoned",
                "no new placements" if cordoned else "accepting placements again",
            )
            break
        return await self._node(name)

    @map_errors
    async def CordonNode(
        self, request: cpb.CordonNodeRequest, context: Context
    ) -> pb.Node:
        return await self._set_cordon(request.name, True)

    @map_errors
    async def UncordonNode(
        self, request: cpb.CordonNodeRequest, context: Context
    ) -> pb.Node:
        return await self._set_cordon(request.name, False)

    @map_errors
    async def PlanCapacity(
        self, request: cpb.PlanCapacityRequest, context: Context
    ) -> cpb.CapacityPlan:
        """Ganeti's N+1 check on the current state: lose the largest node, re-place its HA
        partitions on the rest."""
        cache = self.ctx.cache
        ha = [
            request_for(name, c.partition.spec, c.partition.status.arch)
            for name, c in cache.partitions.items()
            if c.partition.spec.ha and name in cache.bindings
        ]
        result = capacity_plan(snapshot_of(cache), ha, self.ctx.scheduler)
        return cpb.CapacityPlan(
            lost_node=result.lost_node or "",
            ok=result.ok,
            ha_partitions=len(result.placed) + len(result.unplaced),
            unplaced=[d.partition for d in result.unplaced],
            moves={d.partition: d.node or "" for d in result.placed},
            summary=result.summary,
        )

    @map_stream_errors
    async def DrainNode(
        self, request: cpb.DrainNodeRequest, context: Context
    ) -> AsyncIterator[cpb.DrainProgress]:
        """Cordon; move what runs there elsewhere with Quick Migration (save here, restore on
        another node: the guests continue where they were); stop and re-place what has not
        started yet or cannot be saved; report progress until empty or the deadline."""
        name = request.name
        await self._set_cordon(name, True)
        deadline_s = request.deadline_seconds or 3600
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        yield cpb.DrainProgress(message=f"node {name} cordoned; moving its partitions away")
        moving: set[str] = set()  # saved here, to be restored elsewhere
        last = ""
        while True:
            parts = await self.ctx.store.list_partitions()
            bound = [sp for sp in parts if sp.binding_node == name]
            for sp in bound:
                await self._drain_one(sp, name, moving)
            for sp in parts:
                p = sp.partition
                if p.name in moving and p.status.phase == P.PARTITION_PHASE_SAVED:
                    p.spec.desired_state = P.DESIRED_STATE_RUNNING
                    p.status.phase = P.PARTITION_PHASE_PENDING
                    p.status.reason = f"restoring on another node (drain of {name})"
                    try:
                        await self.ctx.store.update_partition(sp)
                        moving.discard(p.name)
                    except Conflict:
                        pass
                elif p.name in moving and p.status.phase not in (
                        P.PARTITION_PHASE_SAVING, P.PARTITION_PHASE_SAVED):
                    moving.discard(p.name)  # the save failed or it ended: handled as bound
            if not bound and not moving:
                yield cpb.DrainProgress(message=f"node {name} drained", done=True)
                return
            waiting = sorted({sp.partition.name for sp in bound} | moving)
            msg = f"waiting for {len(waiting)} partition(s) to leave: {', '.join(waiting[:10])}"
            if loop.time() >= deadline:
                yield cpb.DrainProgress(
                    message=f"drain deadline of {deadline_s}s passed; still {msg}",
                    remaining=len(waiting), failed=True,
                )
                return
            if msg != last:
                yield cpb.DrainProgress(message=msg, remaining=len(waiting))
                last = msg
            await asyncio.sleep(DRAIN_POLL_S)

    async def _drain_one(self, sp: StoredPartition, node: str, moving: set[str]) -> None:
        p = sp.partition
        phase = p.status.phase
        if phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED) and \
                p.name not in moving and not p.status.reason.startswith(SAVE_FAILED):
            p.spec.desired_state = P.DESIRED_STATE_SAVED
            p.status.phase = P.PARTITION_PHASE_SAVING
            p.status.reason = f"draining node {node}: saving to restore elsewhere"
            moving.add(p.name)
        elif phase in HOLDING and phase not in (P.PARTITION_PHASE_STOPPING,
                                                P.PARTITION_PHASE_SAVING):
            p.status.phase = P.PARTITION_PHASE_STOPPING  # not started yet, or not savable
            p.status.reason = f"draining node {node}"
        else:
            return
        try:
            await self.ctx.store.update_partition(sp)
        except Conflict:
            moving.discard(p.name)
