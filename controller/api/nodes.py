"""Public API: nodes (list, get, cordon, uncordon, drain, remove) and the N+1 plan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api import heartbeats
from controller.api.context import ApiContext
from controller.api.paging import (
    encode_token,
    fitting,
    next_token,
    open_cursor,
    page_size,
    query_digest,
    restart_if_compacted,
)
from controller.errors import Conflict, FailedPrecondition, NotFound
from controller.grpc_errors import Context, map_errors, map_stream_errors
from controller.partitions.drain import cancelled, new_drain
from controller.partitions.machine import NodeLost
from controller.placement import (
    DEFAULT_CPU_RATIO,
    DEFAULT_MEMORY_RATIO,
    request_for,
    snapshot_of,
)
from controller.scheduler import capacity_plan
from controller.store import Allocation

P = pb
OP = pb.NodeOperation
DRAIN_TICK_S = 1.0  # progress is also re-sent this often while nothing changes


def with_usage(node: pb.Node, alloc: Allocation | None, alive: bool,
               drain: pb.NodeOperation | None = None,
               eviction: pb.NodeOperation | None = None) -> pb.Node:
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
    if drain is not None:
        st.drain.CopyFrom(drain)
    if eviction is not None:
        st.eviction.CopyFrom(eviction)
    return node


def progress(op: pb.NodeOperation) -> cpb.DrainProgress:
    return cpb.DrainProgress(
        message=op.message, remaining=len(op.pending),
        done=op.state == OP.STATE_COMPLETED,
        failed=op.state in (OP.STATE_FAILED, OP.STATE_CANCELLED), drain=op)


class NodesApi:
    ctx: ApiContext

    async def _node(self, name: str) -> pb.Node:
        nodes = self.ctx.store.nodes
        node = await nodes.get(name)
        drain, _ = await nodes.operation(OP.KIND_DRAIN, name)
        eviction, _ = await nodes.operation(OP.KIND_EVICTION, name)
        node = with_usage(node, await nodes.allocation(name), await nodes.alive(name),
                          drain, eviction)
        await heartbeats.refresh(self.ctx.store, self.ctx.sessions, [node])
        return node

    @map_errors
    async def ListNodes(
        self, request: cpb.ListNodesRequest, context: Context
    ) -> cpb.ListNodesResponse:
        """A page of nodes by name, with their usage at the page's revision."""
        query = query_digest()
        cursor = await open_cursor(self.ctx.store, request.page_token, "nodes", query)
        with restart_if_compacted(cursor):
            page, allocs, alive = await self.ctx.store.nodes.page(
                after=cursor.after, revision=cursor.revision,
                want=page_size(request.page_size))
        cache = self.ctx.store.cache
        nodes = [with_usage(n, allocs.get(n.name), n.name in alive,
                            cache.drains.get(n.name, (None, 0))[0],
                            cache.evictions.get(n.name, (None, 0))[0]) for n in page.items]
        # Drains and evictions list partitions: a page of draining nodes can outgrow what
        # the scan measured. Cut it there; the next page starts after the last one kept.
        await heartbeats.refresh(self.ctx.store, self.ctx.sessions, nodes)
        keep = fitting([n.ByteSize() for n in nodes])
        if keep < len(nodes):
            return cpb.ListNodesResponse(nodes=nodes[:keep], next_page_token=encode_token(
                "nodes", query, nodes[keep - 1].name, page.revision))
        return cpb.ListNodesResponse(nodes=nodes, next_page_token=next_token("nodes", query,
                                                                             page))

    @map_errors
    async def GetNode(self, request: cpb.GetNodeRequest, context: Context) -> pb.Node:
        return await self._node(request.name)

    @map_errors
    async def CordonNode(self, request: cpb.CordonNodeRequest, context: Context) -> pb.Node:
        await self.ctx.store.nodes.set_cordon(request.name, True)
        return await self._node(request.name)

    @map_errors
    async def UncordonNode(self, request: cpb.CordonNodeRequest, context: Context) -> pb.Node:
        """Accept placements again; a drain under way is cancelled (as `nomad node drain
        -disable`): what it already moved stays where it is now."""
        nodes = self.ctx.store.nodes
        await nodes.set_cordon(request.name, False)
        for _ in range(8):
            op, rev = await nodes.operation(OP.KIND_DRAIN, request.name)
            if op is None or op.state != OP.STATE_RUNNING:
                break
            try:
                why = "cancelled: the node was uncordoned"
                await nodes.put_operation(cancelled(op, why), rev, fenced=False,
                                          notes=[("DrainCancelled", why, True)])
                break
            except Conflict:
                continue
        return await self._node(request.name)

    @map_errors
    async def PlanCapacity(
        self, request: cpb.PlanCapacityRequest, context: Context
    ) -> cpb.CapacityPlan:
        """Ganeti's N+1 check on the current state: lose the largest node, re-place its HA
        partitions on the rest."""
        cache = self.ctx.store.cache
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
        """Cordon the node and record a drain (unless one is under way), then follow its
        record until it ends. The leading controller carries the drain out; this stream
        only watches, so a client that goes away ends nothing."""
        name = request.name
        nodes, cache = self.ctx.store.nodes, self.ctx.store.cache
        await nodes.get(name)  # NOT_FOUND first
        await nodes.set_cordon(name, True)
        for _ in range(8):
            op, rev = await nodes.operation(OP.KIND_DRAIN, name)
            if op is not None and op.state == OP.STATE_RUNNING:
                break
            bound = sorted((await nodes.allocation(name)).entries)
            op = new_drain(name, bound, request.deadline_seconds or 3600)
            try:
                rev = await nodes.put_operation(
                    op, rev, fenced=False,
                    notes=[("DrainStarted", f"cordoned; moving {len(bound)} partition(s) "
                            "away", False)])
                break
            except Conflict:
                continue
        else:
            raise Conflict(f"the drain of node {name!r} kept changing; try again")
        changed = asyncio.Event()

        def listener(kind: str, key: str) -> None:
            if kind == "" or (kind == "drains" and key == name):
                changed.set()

        cache.subscribe(listener)
        try:
            yield progress(op)
            last = op
            while op.state == OP.STATE_RUNNING:
                try:
                    async with asyncio.timeout(DRAIN_TICK_S):
                        await changed.wait()
                except TimeoutError:
                    pass
                changed.clear()
                seen, seen_rev = cache.drains.get(name, (None, 0))
                if seen is None or seen_rev < rev:
                    continue  # the cache has not caught up with our own write yet
                op = seen
                if op != last:
                    yield progress(op)
                    last = op
        finally:
            cache.unsubscribe(listener)

    @map_errors
    async def RemoveNode(
        self, request: cpb.RemoveNodeRequest, context: Context
    ) -> cpb.RemoveNodeResponse:
        """Remove a dead node for good, so that it no longer counts anywhere (placement,
        the mass-loss hold). Refused while the node is alive: removing a live node cannot
        stop what it runs, and its agent would register it again."""
        name = request.name
        nodes = self.ctx.store.nodes
        node = await nodes.get(name)  # NOT_FOUND first
        if await nodes.alive(name):
            raise FailedPrecondition(
                f"node {name!r} is alive (its agent holds a session): stop its agent first "
                "(drain it to move its partitions away); a live node is never removed")
        if node.status.state != P.NODE_STATE_NOT_READY:
            raise FailedPrecondition(
                f"node {name!r} has just lost its lease and is not marked NotReady yet; "
                "try again in a few seconds")
        bound = sorted((await nodes.allocation(name)).entries)
        if bound and not request.force:
            raise FailedPrecondition(
                f"node {name!r} still holds {len(bound)} partition(s): "
                f"{', '.join(bound[:10])}; remove it with --force to evict them (HA ones "
                "restart elsewhere, the others become Lost)")
        evicted: list[str] = []
        for pname in bound:
            try:
                out = await self.ctx.actions.apply_at(pname, name, 0, NodeLost(name),
                                                      guard=[nodes.lease_absent(name)])
            except NotFound:
                continue
            if out.release:
                evicted.append(pname)
        await nodes.remove(name)
        return cpb.RemoveNodeResponse(evicted=evicted)
