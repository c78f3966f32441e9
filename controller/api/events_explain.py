"""Public API: events (list, watch) and placement explanations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.events import list_events
from controller.grpc_errors import Context, map_errors, map_stream_errors
from controller.placement import explanation, request_for, snapshot_of
from controller.scheduler import explain
from controller.store.etcd import WatchEvent
from controller.store.objects import decode
from controller.validation import normalize_spec


class EventsExplainApi:
    ctx: ApiContext

    @map_errors
    async def ListEvents(
        self, request: cpb.ListEventsRequest, context: Context
    ) -> cpb.ListEventsResponse:
        events = await list_events(self.ctx.store.etcd, self.ctx.store.keys, request.object,
                                   request.limit)
        return cpb.ListEventsResponse(events=events)

    @map_stream_errors
    async def WatchEvents(
        self, request: cpb.ListEventsRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        etcd, keys = self.ctx.store.etcd, self.ctx.store.keys
        kvs, revision = await etcd.get_prefix(keys.events)
        backlog = [decode(pb.Event, kv.value) for kv in kvs]
        if request.object:
            backlog = [e for e in backlog if e.object == request.object]
        for ev in backlog[-request.limit:] if request.limit else backlog:
            yield ev
        q: asyncio.Queue[pb.Event | None] = asyncio.Queue()

        def on_events(events: list[WatchEvent], _: int) -> None:
            for we in events:
                if not we.deleted:
                    q.put_nowait(decode(pb.Event, we.kv.value))

        cancel = etcd.watch_prefix(
            keys.events, revision + 1, on_events, lambda _: q.put_nowait(None)
        )
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
            sp = await self.ctx.store.get_partition(request.name)
            p = sp.partition
            req = request_for(p.name, p.spec, p.status.arch)
            current = sp.binding_node
        else:
            spec = pb.PartitionSpec()
            spec.CopyFrom(request.dry_run)
            normalize_spec(spec)
            image = await self.ctx.store.get_image(spec.image)
            req = request_for("dry-run", spec, image.arch)
            current = ""
        snapshot = snapshot_of(self.ctx.cache, exclude=request.name)
        decision = explain(req, snapshot, self.ctx.scheduler)
        return explanation(decision, current)
