"""Public API: events (list, watch) and placement explanations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.grpc_errors import Context, map_errors, map_stream_errors
from controller.images.resolve import resolve
from controller.placement import explanation, request_for, snapshot_of
from controller.scheduler import explain
from controller.validation import normalize_spec


class EventsExplainApi:
    ctx: ApiContext

    @map_errors
    async def ListEvents(
        self, request: cpb.ListEventsRequest, context: Context
    ) -> cpb.ListEventsResponse:
        events, _ = await self.ctx.store.events.list(request.object, request.limit)
        return cpb.ListEventsResponse(events=events)

    @map_stream_errors
    async def WatchEvents(
        self, request: cpb.ListEventsRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        store = self.ctx.store.events
        backlog, revision = await store.list(request.object, request.limit)
        for ev in backlog:
            yield ev
        q: asyncio.Queue[pb.Event | None] = asyncio.Queue()
        cancel = store.watch(revision, q.put_nowait, lambda _: q.put_nowait(None))
        try:
            while True:
                got = await q.get()
                if got is None:
                    return
                if not request.object or got.object == request.object:
                    yield got
        finally:
            cancel()

    @map_errors
    async def ExplainPlacement(
        self, request: cpb.ExplainPlacementRequest, context: Context
    ) -> pb.PlacementExplanation:
        if request.name:
            sp = await self.ctx.store.partitions.get(request.name)
            p = sp.partition
            req = request_for(p.name, p.spec, p.status.arch, p.status.target_node)
            current = sp.binding_node
        else:
            spec = pb.PartitionSpec()
            spec.CopyFrom(request.dry_run)
            normalize_spec(spec)
            image = await resolve(self.ctx.store, spec.image)
            req = request_for("dry-run", spec, image.arch)
            current = ""
        snapshot = snapshot_of(self.ctx.store.cache, exclude=request.name)
        decision = explain(req, snapshot, self.ctx.scheduler)
        return explanation(decision, current)
