"""Public API: partitions (create, get, list, watch, start, stop, delete, logs, stdin)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.errors import Conflict, FailedPrecondition, InvalidArgument
from controller.events import now_ts
from controller.grpc_errors import Context, map_errors, map_stream_errors
from controller.lifecycle import HOLDING, STARTABLE, phase_name
from controller.store.etcd import Op
from controller.store.objects import StoredPartition
from controller.validation import check_name, normalize_spec

P = pb
RETRIES = 8


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
        image = self.ctx.cache.images.get(spec.image) or await self.ctx.store.get_image(
            spec.image)
        now = now_ts()
        p = pb.Partition(name=request.name, spec=spec)
        st = p.status
        st.created_at.CopyFrom(now)
        st.updated_at.CopyFrom(now)
        st.arch = image.arch
        if spec.desired_state == P.DESIRED_STATE_RUNNING:
            st.phase = P.PARTITION_PHASE_PENDING
            st.reason = "waiting for placement"
        else:
            spec.desired_state = P.DESIRED_STATE_OFF
            st.phase = P.PARTITION_PHASE_OFF
        key, value = self.ctx.events.build(
            "Partition", p.name, "Created", f"image {spec.image}, {spec.vcpus} vCPUs")
        lease = await self.ctx.events.lease_id()
        return await self.ctx.store.create_partition(p, [Op.put(key, value, lease)])

    @map_errors
    async def GetPartition(
        self, request: cpb.GetPartitionRequest, context: Context
    ) -> pb.Partition:
        return (await self.ctx.store.get_partition(request.name)).partition

    @map_errors
    async def ListPartitions(
        self, request: cpb.ListPartitionsRequest, context: Context
    ) -> cpb.ListPartitionsResponse:
        out = []
        for sp in await self.ctx.store.list_partitions():
            p = sp.partition
            if request.node and p.status.node != request.node:
                continue
            if any(p.spec.labels.get(k) != v for k, v in request.label_selector.items()):
                continue
            out.append(p)
        return cpb.ListPartitionsResponse(partitions=out)

    async def WatchPartitions(
        self, request: cpb.WatchPartitionsRequest, context: Context
    ) -> AsyncIterator[cpb.PartitionWatchEvent]:
        cache = self.ctx.cache
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
                names = [name] if name else sorted(cache.partitions)
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
            await self.ctx.store.get_node(request.node)  # NOT_FOUND for an unknown node

        def change(sp: StoredPartition) -> str:
            p = sp.partition
            st = p.status
            if p.spec.desired_state == P.DESIRED_STATE_RUNNING and st.phase not in STARTABLE:
                if st.phase == P.PARTITION_PHASE_STOPPING:
                    raise FailedPrecondition(
                        f"partition {p.name!r} is Stopping; start it again once it is Off"
                    )
                return ""  # already starting or running
            if st.phase not in STARTABLE and st.phase != P.PARTITION_PHASE_PENDING:
                raise FailedPrecondition(
                    f"partition {p.name!r} is {phase_name(st.phase)}; it cannot be started"
                )
            if request.node:
                p.spec.node = request.node
            p.spec.desired_state = P.DESIRED_STATE_RUNNING
            st.phase = P.PARTITION_PHASE_PENDING
            st.reason = "waiting for placement" + (
                " (restoring its saved state)" if st.saved_state.digest else "")
            st.has_exit_code = False
            st.exit_code = 0
            st.updated_at.CopyFrom(now_ts())
            return "update"

        p = await self.ctx.change_partition(request.name, change)
        await self.ctx.events.record("Partition", p.name, "StartRequested", "start requested")
        return p

    @map_errors
    async def StopPartition(
        self, request: cpb.StopPartitionRequest, context: Context
    ) -> pb.Partition:
        def change(sp: StoredPartition) -> str:
            p = sp.partition
            st = p.status
            p.spec.desired_state = P.DESIRED_STATE_OFF
            st.updated_at.CopyFrom(now_ts())
            if st.phase == P.PARTITION_PHASE_PENDING:
                st.phase = P.PARTITION_PHASE_OFF
                st.reason = "stopped before it was placed"
                return "release" if sp.binding_node else "update"
            if st.phase in HOLDING:
                if st.phase != P.PARTITION_PHASE_STOPPING:
                    st.phase = P.PARTITION_PHASE_STOPPING
                    st.reason = "stop requested"
                return "update"
            return "update"

        p = await self.ctx.change_partition(request.name, change)
        await self.ctx.events.record("Partition", p.name, "StopRequested", "stop requested")
        return p

    @map_errors
    async def DeletePartition(
        self, request: cpb.DeletePartitionRequest, context: Context
    ) -> cpb.DeletePartitionResponse:
        for _ in range(RETRIES):
            sp = await self.ctx.store.get_partition(request.name)
            phase = sp.partition.status.phase
            if phase in HOLDING and not request.force:
                raise FailedPrecondition(
                    f"partition {request.name!r} is {phase_name(phase)}: stop it first, "
                    "or delete with --force"
                )
            try:
                await self.ctx.store.delete_partition(sp)
                break
            except Conflict:
                continue
        else:
            raise Conflict(f"partition {request.name!r} kept changing; try again")
        await self.ctx.events.record("Partition", request.name, "Deleted", "deleted")
        return cpb.DeletePartitionResponse()

    @map_stream_errors
    async def PartitionLogs(
        self, request: cpb.PartitionLogsRequest, context: Context
    ) -> AsyncIterator[cpb.LogChunk]:
        sp = await self.ctx.store.get_partition(request.name)
        node = sp.partition.status.node
        if not node:
            yield cpb.LogChunk(eof=True)
            return
        session = self.ctx.sessions.get(node)
        if session is None:
            async for chunk in self.ctx.proxy_logs(node, request):
                yield chunk
            return
        async for data in session.console(request.name, request.offset, request.follow):
            if data.error:
                raise FailedPrecondition(f"logs of {request.name!r}: {data.error}")
            yield cpb.LogChunk(data=data.data, offset=data.offset, eof=data.eof)

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
                node = (await self.ctx.store.get_partition(name)).partition.status.node
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

