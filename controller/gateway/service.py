"""The AgentGateway service: registration, the per-agent session stream, image and state
pulls.

A node's liveness is its lease key in etcd, attached to the node lease of the replica that
holds the agent's session; heartbeats are acknowledged only after a renewal of that lease
begun after they arrived (liveness.py). A replica that cannot renew (cut off from etcd)
sends no acks: its agents move to another replica. Agents never see etcd.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller import logs
from controller.errors import (
    NotFound,
    PermissionDenied,
    StoreError,
    ViridianError,
)
from controller.gateway.admission import RETRY_AFTER_KEY, SetupAdmission
from controller.gateway.dispatch import image_for
from controller.gateway.inventory import InventoryChecker
from controller.gateway.liveness import NodeLiveness
from controller.gateway.registrar import Registrar
from controller.gateway.reports import ReportApplier
from controller.gateway.sessions import NodeSession, SessionRegistry
from controller.gateway.state_transfer import StateTransfers
from controller.gateway.timings import DEFAULT_MAX_HEARTBEATS_PER_S, Timings
from controller.grpc_errors import Context, map_errors, map_stream_errors, status_of
from controller.images.backend import ImageBackend
from controller.images.blobstore import DIGEST
from controller.metrics import ControllerMetrics
from controller.partitions.actions import PartitionActions
from controller.security import principal as callers
from controller.security.tls import Dialer
from controller.store import Store
from controller.store.nodes import Registration
from controller.validation import check_address, check_name, check_node_registration

log = logging.getLogger(__name__)
P = pb
#: a registration waits for its batch (registrar.py) at most until this long before its
#: caller's deadline, then is answered UNAVAILABLE
DEADLINE_SLACK_S = 0.1
#: messages of one session read but not applied yet; the reader waits beyond
IN_ORDER_LIMIT = 1024
ACTIVE = (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED)


@dataclass
class Grant:
    session_id: str
    lease: int
    claim: int
    adopted: list[apb.PartitionReport] = field(default_factory=list)
    at: float = 0.0   # loop time of the answer


def _caller_may_act_for(node: str) -> bool:
    """A node certificate acts only for its own node (plaintext servers: anyone)."""
    caller = callers.current()
    return caller.kind == "insecure" or caller.is_node(node)


class AgentGateway(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, store: Store, actions: PartitionActions, sessions: SessionRegistry,
                 lease_ttl: int, advertise: str, images: ImageBackend,
                 dialer: Dialer | None = None,
                 metrics: ControllerMetrics | None = None,
                 max_heartbeats_per_s: float = DEFAULT_MAX_HEARTBEATS_PER_S) -> None:
        self.store = store
        self.metrics = metrics or ControllerMetrics()
        self.images = images
        self.dialer = dialer or Dialer(None)
        self.sessions = sessions
        self.timings = Timings(lease_ttl, max_heartbeats_per_s)
        self.lease_ttl = lease_ttl
        self.advertise = advertise
        self.reports = ReportApplier(store, actions)
        self.inventory = InventoryChecker(store, actions, sessions)
        self._granted: dict[str, Grant] = {}
        self.registrar = Registrar(store.nodes)
        self.admission = SetupAdmission()
        self.transfers = StateTransfers(store, sessions, advertise, self.dialer)
        self.liveness = NodeLiveness(store, sessions, self.timings, self.metrics,
                                     self.admission.incoming)

    @map_errors
    async def Register(
        self, request: apb.RegisterRequest, context: Context
    ) -> apb.RegisterResponse:
        name = request.node
        check_name("node", name)
        if not _caller_may_act_for(name):
            raise PermissionDenied(f"{callers.current()} may not register as node {name!r}")
        check_node_registration(name, request.spec)
        retry_after = self.admission.admit(name)
        if retry_after is not None:
            self.metrics.register_refusals.inc()
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"this controller is setting up {len(self.admission)} other sessions; "
                f"node {name!r} should retry in {retry_after:.1f}s (here or at another "
                "replica)",
                trailing_metadata=((RETRY_AFTER_KEY, str(round(retry_after * 1000))),))
        left = context.time_remaining()
        arrived = asyncio.get_running_loop().time()
        try:
            lease = await self.liveness.lease()
            claim, _ = await self.registrar.register(
                Registration(name, request.spec, len(request.running)), self.advertise,
                lease, None if left is None else max(left - DEADLINE_SLACK_S, 0.0))
        except BaseException:
            self.admission.done(name)
            raise
        session_id = uuid.uuid4().hex
        old = self._granted.pop(name, None)
        if old is not None:
            current = self.sessions.get(name)
            if current is not None and current.session_id == old.session_id:
                current.close()  # superseded: the new registration replaced its claim
        grant = self._granted[name] = Grant(session_id, lease, claim, list(request.running))
        reply = self.timings.response(session_id,
                                      len(self.sessions) + self.admission.incoming())
        reply.state_ticket_key = await self.transfers.node_key(name)
        grant.at = asyncio.get_running_loop().time()
        self.metrics.register_seconds.observe(grant.at - arrived)
        return reply

    async def Session(
        self,
        request_iterator: AsyncIterator[apb.AgentMessage],
        context: Context,
    ) -> AsyncIterator[apb.ControllerMessage]:
        first = await anext(request_iterator, None)
        if first is None or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
            return
        hello = first.hello
        if not _caller_may_act_for(hello.node):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{callers.current()} may not open a session for node "
                                f"{hello.node!r}")
            return
        grant = self._granted.get(hello.node)
        if grant is None or grant.session_id != hello.session_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no registration for node {hello.node!r} with this session id: register first",
            )
            return
        session = NodeSession(hello.node, hello.session_id, grant.lease, grant.claim)
        logs.bind_context(node=hello.node, request_id=hello.session_id)
        session.last_seen = asyncio.get_running_loop().time()
        if grant.at:
            self.metrics.session_open_seconds.observe(session.last_seen - grant.at)
        adopted, grant.adopted = grant.adopted, []
        for r in adopted:
            if r.phase in ACTIVE:
                session.assign(r.name, r.epoch)
        self.sessions.attach(session)
        # Accepted: the agent sends its first heartbeat only now (node_agent/session.py).
        await context.send_initial_metadata(())
        log.info("session opened for node %s", hello.node)
        tasks = [asyncio.create_task(self._read(session, request_iterator, adopted))]
        try:
            while True:
                msg = await session.outgoing.get()
                if msg is None:
                    break
                yield msg
        finally:
            for task in tasks:
                task.cancel()
            self.sessions.detach(session)
            self.admission.done(session.node)
            self.inventory.session_ended(session)
            self.liveness.ended(session)
            if (g := self._granted.get(hello.node)) is not None and \
                    g.session_id == session.session_id:
                del self._granted[hello.node]
            log.info("session closed for node %s", hello.node)

    async def _read(self, session: NodeSession, it: AsyncIterator[apb.AgentMessage],
                    adopted: list[apb.PartitionReport]) -> None:
        """The agent's messages. Heartbeats are acknowledged as they arrive, and console,
        state and usage data handed on; inventories, reports and events are applied in
        order by `_apply` (a heartbeat's inventory is checked before any later report is
        applied: a report sent after it may start a partition it lacks).

        Why two tasks: applying a report is an etcd transaction. Read and applied in one
        loop, a node re-registering with 80 partitions had its 80 re-adopted reports
        applied before its first heartbeat was even read; on a busy replica that took
        longer than the ack timeout, the agent registered again with the same 80, and the
        cycle repeated until the replica let the node's key go and its partitions were
        lost (bench/scale.py, 20,000 partitions on 1,000 agents). An ack proves only that
        the node's lease key outlives the heartbeat; it never waited for the reports."""
        ordered: asyncio.Queue[apb.AgentMessage | None] = asyncio.Queue(IN_ORDER_LIMIT)
        applier = asyncio.create_task(self._apply(session, ordered, adopted))
        loop = asyncio.get_running_loop()
        try:
            async for msg in it:
                session.last_seen = loop.time()
                kind = msg.WhichOneof("msg")
                if kind == "console":    # bulk bytes and figures: handed on at once, so
                    session.deliver_console(msg.console)   # none of them waits in memory
                    continue                               # behind a report
                if kind == "state":
                    session.deliver_state(msg.state)
                    continue
                if kind == "usage":
                    session.record_usage(msg.usage)
                    continue
                if kind == "heartbeat":
                    self.admission.done(session.node)   # set up: its slot is free
                    session.beat_seq = max(session.beat_seq, msg.heartbeat.seq)
                    session.beat_at = loop.time()
                    self.liveness.beat(session)
                if applier.done():
                    break   # it could not apply something: the session ends
                await ordered.put(msg)   # waits while IN_ORDER_LIMIT are not applied yet
            await ordered.put(None)
            await applier
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            applier.cancel()
            session.close()

    async def _apply(self, session: NodeSession,
                     ordered: asyncio.Queue[apb.AgentMessage | None],
                     adopted: list[apb.PartitionReport]) -> None:
        """Apply the re-adopted reports, then each message in the order it came."""
        try:
            for report in adopted:
                await self.reports.apply(session.node, report, session)
            while (msg := await ordered.get()) is not None:
                kind = msg.WhichOneof("msg")
                if kind == "heartbeat":
                    await self.inventory.check(session, msg.heartbeat.inventory)
                elif kind == "report":
                    await self.reports.apply(session.node, msg.report, session)
                elif kind == "event":
                    await self.reports.record_event(session.node, msg.event)
        except StoreError as err:
            # A report or an event could not be written: end the session rather than drop
            # it; the agent registers again and re-sends its latest reports.
            log.warning("session of %s: store error %s; ending it", session.node, err)
            session.close()

    async def PullImage(
        self, request: apb.PullImageRequest, context: Context
    ) -> AsyncIterator[apb.ImageChunk]:
        """Stream a blob from `offset` in chunks of 1 MiB, read as the client takes them
        (gRPC flow control: each yield waits for the transport, nothing is read ahead). A
        replica that lacks the blob fetches it from a peer first, unless local_only (what a
        peer asks: it must not bounce the request on)."""
        caller = callers.current()
        digest = request.digest
        if not DIGEST.fullmatch(digest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"invalid digest {digest[:80]!r}: expected sha256: followed "
                                "by 64 lower-case hex digits")
            return
        if caller.kind == "node" and not self._image_bound_to(digest, caller.name):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"no partition bound to node {caller.name!r} uses image "
                                f"content {digest!r}")
            return
        if request.local_only and caller.kind not in ("controller", "insecure"):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "local_only pulls are for controller replicas")
            return
        started = time.monotonic()
        try:
            async for data in self.images.read(digest, request.offset, request.local_only):
                self.metrics.image_pull_bytes.inc(len(data))
                yield apb.ImageChunk(data=data)
            self.metrics.image_pull_seconds.observe(time.monotonic() - started)
        except NotFound as err:
            deleted = digest not in self.store.cache.contents
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err) + (
                " (no image names this content any more: deleted with image rm --force)"
                if deleted and not request.local_only else ""))
        except (ViridianError, OSError) as err:
            code = status_of(err) if isinstance(err, ViridianError) else \
                grpc.StatusCode.UNAVAILABLE
            await context.abort(code, str(err))

    async def ReplicateBlob(
        self, request: apb.ReplicateBlobRequest, context: Context
    ) -> apb.ReplicateBlobResponse:
        """A peer replica stored a blob: copy it here from `source` (controllers only)."""
        caller = callers.current()
        if caller.kind not in ("controller", "insecure"):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{caller} may not ask for blob replication")
        if not DIGEST.fullmatch(request.digest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"invalid digest {request.digest[:80]!r}")
        peers = self.images.peers
        if peers is None:  # a shared store: every replica already sees it
            return apb.ReplicateBlobResponse(present=await self.images.blobs.has(request.digest))
        try:
            check_address(request.source)
            await peers.fetch(request.digest, request.source)
        except ViridianError as err:
            await context.abort(status_of(err), str(err))
        return apb.ReplicateBlobResponse(present=True)

    def _image_bound_to(self, digest: str, node: str) -> bool:
        cache = self.store.cache
        for name in cache.bound_to(node):
            cached = cache.partitions.get(name)
            if cached is not None and image_for(cache, cached.partition.spec).digest == digest:
                return True
        return False

    @map_stream_errors
    async def PullState(
        self, request: apb.PullStateRequest, context: Context
    ) -> AsyncIterator[apb.StateChunk]:
        """Relay a saved state file from the node that holds it, flow controlled (the
        fallback when the destination cannot reach the source itself)."""
        async for chunk in self.transfers.relay(request, context):
            self.metrics.state_transfer_bytes.inc(len(chunk.data))
            yield chunk

    @map_errors
    async def GetStateTicket(
        self, request: apb.GetStateTicketRequest, context: Context
    ) -> apb.GetStateTicketResponse:
        return await self.transfers.ticket(request)
