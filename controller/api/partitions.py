"""Public API: partitions (create, get, list, watch, start, stop, delete, logs, stdin)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.api.paging import (
    next_token,
    open_cursor,
    page_size,
    query_digest,
    restart_if_compacted,
)
from controller.errors import FailedPrecondition, InvalidArgument
from controller.grpc_errors import Context, map_errors, map_stream_errors
from controller.images.resolve import resolve
from controller.partitions.machine import Delete, Start, Stop
from controller.validation import check_name, normalize_spec, stop_grace

P = pb


class PartitionsApi:
    ctx: ApiContext

    @map_errors
    async def CreatePartition(
        self, request: cpb.CreatePartitionRequest, context: Context
    ) -> pb.Partition:
        check_name("partition", request.name)
        spec = pb.PartitionSpec()
        spec.CopyFrom(request.spec)
        normalize_spec(spec)
        # spec.node (deprecated) was a permanent pin; honour it as the first placement's
        # target node, as `start --node` does.
        target = spec.node
        spec.ClearField("node")
        if target:
            await self.ctx.store.nodes.get(target)  # NOT_FOUND for an unknown node
        # The reference is resolved once, here: the partition is pinned to that content, so
        # retagging never changes what it runs (or what a restart or move pulls).
        image = await resolve(self.ctx.store, spec.image)
        spec.image_digest = image.digest
        return await self.ctx.actions.create(request.name, spec, image.arch, target)

    @map_errors
    async def GetPartition(
        self, request: cpb.GetPartitionRequest, context: Context
    ) -> pb.Partition:
        return (await self.ctx.store.partitions.get(request.name)).partition

    @map_errors
    async def ListPartitions(
        self, request: cpb.ListPartitionsRequest, context: Context
    ) -> cpb.ListPartitionsResponse:
        """A page of partitions by name, filtered here (node, labels, phase, name prefix)."""
        selector = dict(request.label_selector)
        query = query_digest(node=request.node, labels=selector, phase=request.phase,
                             prefix=request.name_prefix)
        cursor = await open_cursor(self.ctx.store, request.page_token, "partitions", query)

        def keep(p: pb.Partition) -> bool:
            return ((not request.node or p.status.node == request.node)
                    and (not request.phase or p.status.phase == request.phase)
                    and all(p.spec.labels.get(k) == v for k, v in selector.items()))

        with restart_if_compacted(cursor):
            page = await self.ctx.store.partitions.page(
                keep, name_prefix=request.name_prefix, after=cursor.after,
                revision=cursor.revision, want=page_size(request.page_size))
        return cpb.ListPartitionsResponse(
            partitions=page.items, next_page_token=next_token("partitions", query, page))

    async def WatchPartitions(
        self, request: cpb.WatchPartitionsRequest, context: Context
    ) -> AsyncIterator[cpb.PartitionWatchEvent]:
        cache = self.ctx.store.cache
        changed: asyncio.Queue[str] = asyncio.Queue()

        def listener(kind: str, name: str) -> None:
            if kind in ("", "partitions") and (not request.name or name in ("", request.name)):
                changed.put_nowait(name)

        cache.subscribe(listener)
        sent: dict[str, int] = {}
        try:
            changed.put_nowait("")
            while True:
                name = await changed.get()
                names = [name] if name else sorted(set(cache.partitions) | set(sent))
                if request.name and not name:
                    names = [request.name]
                for n in names:
                    c = cache.partitions.get(n)
                    if c is None:
                        if n in sent:
                            del sent[n]
                            yield cpb.PartitionWatchEvent(
                                type=cpb.PartitionWatchEvent.TYPE_DELETED,
                                partition=pb.Partition(name=n),
                            )
                        continue
                    if sent.get(n) == c.mod_revision:
                        continue
                    sent[n] = c.mod_revision
                    p = pb.Partition()
                    p.CopyFrom(c.partition)
                    p.status.epoch = cache.epoch(n)
                    yield cpb.PartitionWatchEvent(
                        type=cpb.PartitionWatchEvent.TYPE_PUT, partition=p
                    )
        finally:
            cache.unsubscribe(listener)

    @map_errors
    async def StartPartition(
        self, request: cpb.StartPartitionRequest, context: Context
    ) -> pb.Partition:
        if request.node:
            await self.ctx.store.nodes.get(request.node)  # NOT_FOUND for an unknown node
        await self.ctx.require_content(request.name)
        out = await self.ctx.actions.apply(request.name, Start(request.node))
        return out.partition

    @map_errors
    async def StopPartition(
        self, request: cpb.StopPartitionRequest, context: Context
    ) -> pb.Partition:
        """Shut Down (SIGTERM, then Turn Off after the grace) or, with force, Turn Off."""
        grace = stop_grace(
            request.grace_seconds if request.HasField("grace_seconds") else None,
            request.force)
        return (await self.ctx.actions.apply(request.name, Stop(grace))).partition

    @map_errors
    async def DeletePartition(
        self, request: cpb.DeletePartitionRequest, context: Context
    ) -> cpb.DeletePartitionResponse:
        await self.ctx.actions.apply(request.name, Delete(request.force))
        return cpb.DeletePartitionResponse()

    @map_stream_errors
    async def PartitionLogs(
        self, request: cpb.PartitionLogsRequest, context: Context
    ) -> AsyncIterator[cpb.LogChunk]:
        sp = await self.ctx.store.partitions.get(request.name)
        node = sp.partition.status.node
        if not node:
            yield cpb.LogChunk(eof=True)
            return
        session = self.ctx.sessions.get(node)
        if session is None:
            async for chunk in self.ctx.proxy_logs(node, request):
                yield chunk
            return
        since = request.since if math.isfinite(request.since) else 0.0
        async for data in session.console(request.name, request.offset, request.follow,
                                          request.tail_lines, since):
            if data.error:
                raise FailedPrecondition(f"logs of {request.name!r}: {data.error}")
            chunk = cpb.LogChunk(data=data.data, offset=data.offset, eof=data.eof)
            if request.timestamps:
                chunk.marks.extend(cpb.LogMark(time=m.time, offset=m.offset)
                                   for m in data.marks)
            yield chunk

    @map_errors
    async def SendStdin(
        self, request_iterator: AsyncIterator[cpb.StdinChunk], context: Context
    ) -> cpb.SendStdinResponse:
        session = None
        name = ""
        async for chunk in request_iterator:
            if session is None:
                name = chunk.name
                if not name:
                    raise InvalidArgument("the first stdin chunk must name the partition")
                node = (await self.ctx.store.partitions.get(name)).partition.status.node
                session = self.ctx.sessions.get(node) if node else None
                if session is None:
                    raise FailedPrecondition(
                        f"partition {name!r} is not running on a node this controller reaches"
                    )
            session.send(
                apb.ControllerMessage(
                    stdin=apb.StdinData(name=name, data=chunk.data, close=chunk.close)
                )
            )
        return cpb.SendStdinResponse()
