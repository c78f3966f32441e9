"""What the API handlers share: the store, the cache, events, sessions, placement settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import controller_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller.cache import ClusterCache
from controller.errors import Conflict, FailedPrecondition
from controller.events import EventRecorder
from controller.scheduler import SchedulerConfig
from controller.sessions import SessionRegistry
from controller.store.objects import ObjectStore, StoredPartition

Change = Callable[[StoredPartition], str]  # returns "" (no write), "update" or "release"
RETRIES = 8


@dataclass
class ApiContext:
    store: ObjectStore
    cache: ClusterCache
    events: EventRecorder
    sessions: SessionRegistry
    scheduler: SchedulerConfig
    advertise: str

    async def change_partition(self, name: str, change: Change) -> pb.Partition:
        """Read, apply `change`, write with a revision compare; again on conflict."""
        for _ in range(RETRIES):
            sp = await self.store.get_partition(name)
            write = change(sp)
            if not write:
                return sp.partition
            try:
                if write == "release":
                    await self.store.release(sp)
                else:
                    await self.store.update_partition(sp)
                return sp.partition
            except Conflict:
                continue
        raise Conflict(f"partition {name!r} kept changing; try again")

    def delete_state(self, partition: str, checkpoint: str, node: str) -> None:
        """Ask the node holding a checkpoint's state file to delete it (best effort: a node
        that is away keeps an orphan file until its partition is forgotten)."""
        session = self.sessions.get(node)
        if session is not None:
            session.send(apb.ControllerMessage(command=apb.PartitionCommand(
                name=partition, checkpoint=checkpoint,
                kind=apb.PartitionCommand.KIND_DELETE_CHECKPOINT)))

    async def proxy_logs(
        self, node: str, request: cpb.PartitionLogsRequest
    ) -> AsyncIterator[cpb.LogChunk]:
        """Relay logs from the replica that holds the node's session (named in its lease key)."""
        holder = self.cache.node_leases.get(node)
        address = holder.value.decode() if holder else ""
        if not address or address == self.advertise:
            raise FailedPrecondition(f"node {node!r} is not connected; its logs are unreachable")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = controller_pb2_grpc.ControllerStub(channel)
            async for chunk in stub.PartitionLogs(request):
                yield chunk
