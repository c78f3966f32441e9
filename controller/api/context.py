"""What the API handlers share: the store, partition actions, sessions, placement settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import controller_pb2_grpc

from controller.errors import FailedPrecondition
from controller.gateway.sessions import SessionRegistry
from controller.images.backend import ImageBackend
from controller.metrics import ControllerMetrics
from controller.partitions.actions import PartitionActions
from controller.scheduler import SchedulerConfig
from controller.security.pki import KeyPair
from controller.security.tls import Dialer
from controller.store import Store


@dataclass
class ApiContext:
    store: Store
    actions: PartitionActions
    sessions: SessionRegistry
    scheduler: SchedulerConfig
    advertise: str                  # this replica's agent-port address (session holder)
    images: ImageBackend            # the blob store image bytes live in
    dialer: Dialer = field(default_factory=lambda: Dialer(None))
    ca: KeyPair | None = None       # signs node certificates at join; None: joins refused
    metrics: ControllerMetrics = field(default_factory=ControllerMetrics)

    async def require_content(self, name: str) -> None:
        """A partition about to (re)start elsewhere needs its pinned image content: refused
        with the reason when a forced `image rm` deleted it (and the GC collected it)."""
        sp = await self.store.partitions.get(name)
        digest = sp.partition.spec.image_digest
        if digest and digest not in self.store.cache.contents and \
                await self.store.images.content(digest) is None:
            raise FailedPrecondition(
                f"the image content partition {name!r} was created from ({digest[:19]}, "
                f"{sp.partition.spec.image}) was deleted (image rm --force): it cannot start "
                "on a node that does not hold it; recreate the partition from a pushed image")

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
        address = await self.store.nodes.session_holder(node)
        if not address or address == self.advertise:
            raise FailedPrecondition(f"node {node!r} is not connected; its logs are unreachable")
        async with self.dialer.aio_channel(address) as channel:
            stub = controller_pb2_grpc.ControllerStub(channel)
            async for chunk in stub.PartitionLogs(request):
                yield chunk
