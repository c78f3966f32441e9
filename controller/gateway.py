"""The AgentGateway service: registration, the per-agent session stream, image pulls.

A node's liveness is an etcd lease this replica keeps alive while the agent's session is
healthy; when the session lapses the lease expires after its TTL and the leader marks the
node NotReady. Agents never see etcd.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller.cache import ClusterCache
from controller.errors import Conflict, InvalidArgument, NotFound, StoreError
from controller.events import EventRecorder, now_ts
from controller.grpc_errors import Context, map_errors
from controller.reports import ReportApplier
from controller.sessions import NodeSession, SessionRegistry
from controller.store.etcd import Compare, Op
from controller.store.objects import ObjectStore
from controller.validation import check_labels, check_name

log = logging.getLogger(__name__)
P = pb


class AgentGateway(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(
        self,
        store: ObjectStore,
        events: EventRecorder,
        sessions: SessionRegistry,
        lease_ttl: int,
        advertise: str,
        cache: ClusterCache,
    ) -> None:
        self.store = store
        self.events = events
        self.sessions = sessions
        self.lease_ttl = lease_ttl
        self.advertise = advertise
        self.cache = cache
        self.reports = ReportApplier(store, events, cache)
        self._granted: dict[str, tuple[str, int]] = {}  # node -> (session id, lease id)
        self._adopted: dict[str, list[apb.PartitionReport]] = {}  # reported at registration
        self._revoking: set[asyncio.Task[None]] = set()

    @map_errors
    async def Register(
        self, request: apb.RegisterRequest, context: Context
    ) -> apb.RegisterResponse:
        name = request.node
        check_name("node", name)
        check_labels("node label", request.spec.labels)
        if request.spec.vcpus < 1 or request.spec.memory_bytes < (1 << 20):
            raise InvalidArgument("a node must offer at least 1 vCPU and 1Mi of memory")
        if not request.spec.arches:
            raise InvalidArgument("a node must declare the architectures it can emulate")
        try:
            node, rev = await self.store.get_node(name)
            fresh = False
        except NotFound:
            node, rev, fresh = pb.Node(name=name), 0, True
        cordoned = node.spec.cordoned
        node.spec.CopyFrom(request.spec)
        node.spec.cordoned = cordoned
        node.status.state = P.NODE_STATE_READY
        node.status.reason = ""
        node.status.last_heartbeat.CopyFrom(now_ts())
        if fresh:
            node.status.registered_at.CopyFrom(now_ts())
        lease = await self.store.etcd.grant_lease(self.lease_ttl)
        lease_key = self.store.keys.node_lease(name)
        old = await self.store.etcd.get(lease_key)
        node.ClearField("revision")
        # The node and its liveness key in one transaction: never Ready without a lease.
        res = await self.store.etcd.txn(
            [Compare(self.store.keys.node(name), rev)],
            [
                Op.put(self.store.keys.node(name), node.SerializeToString()),
                Op.put(lease_key, self.advertise.encode(), lease),
            ],
        )
        if not res.succeeded:
            await self.store.etcd.revoke_lease(lease)
            raise Conflict(f"node {name!r} changed during registration; retry")
        if old is not None and old.lease and old.lease != lease:
            await self.store.etcd.revoke_lease(old.lease)
        session_id = uuid.uuid4().hex
        self._granted[name] = (session_id, lease)
        self._adopted[name] = list(request.running)
        await self.events.record(
            "Node", name, "Registered" if fresh else "NodeReady",
            f"{request.spec.vcpus} vCPUs, {request.spec.memory_bytes >> 20}Mi, "
            f"{len(request.running)} partitions re-adopted",
        )
        return apb.RegisterResponse(
            session_id=session_id,
            lease_ttl_seconds=self.lease_ttl,
            heartbeat_interval_ms=max(200, self.lease_ttl * 1000 // 3),
        )

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
        granted = self._granted.get(hello.node)
        if granted is None or granted[0] != hello.session_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no registration for node {hello.node!r} with this session id: register first",
            )
            return
        session = NodeSession(hello.node, hello.session_id, granted[1])
        adopted = self._adopted.pop(hello.node, [])
        session.assigned.update((r.name, r.epoch) for r in adopted)
        self.sessions.attach(session)
        try:
            await self._reconcile_adopted(session, adopted)
        except StoreError as err:
            log.warning("reconciling %s's partitions failed: %s", hello.node, err)
        log.info("session opened for node %s", hello.node)
        reader = asyncio.create_task(self._read(session, request_iterator))
        keeper = asyncio.create_task(self._keepalive(session))
        try:
            while True:
                msg = await session.outgoing.get()
                if msg is None:
                    break
                yield msg
        finally:
            reader.cancel()
            keeper.cancel()
            self.sessions.detach(session)
            log.info("session closed for node %s", hello.node)

    async def _reconcile_adopted(
        self, session: NodeSession, adopted: list[apb.PartitionReport]
    ) -> None:
        """Apply what the agent still runs; fail what it should run but no longer has."""
        for report in adopted:
            await self.reports.apply(session.node, report, session)
        reported = {r.name for r in adopted}
        for name, cached in list(self.cache.partitions.items()):  # the cache, not a full read
            p = cached.partition
            if self.cache.bound_node(name) != session.node or name in reported:
                continue
            if p.status.phase in (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING,
                                  P.PARTITION_PHASE_PAUSED, P.PARTITION_PHASE_STOPPING):
                gone = apb.PartitionReport(
                    name=name, epoch=self.cache.epoch(name), phase=P.PARTITION_PHASE_FAILED,
                    reason="the node no longer runs it (its agent restarted without it)",
                )
                await self.reports.apply(session.node, gone, session)

    async def _read(self, session: NodeSession, it: AsyncIterator[apb.AgentMessage]) -> None:
        try:
            loop = asyncio.get_running_loop()
            async for msg in it:
                session.last_seen = loop.time()
                kind = msg.WhichOneof("msg")
                if kind == "heartbeat":
                    session.send(apb.ControllerMessage(
                        ack=apb.HeartbeatAck(lease_ttl_seconds=self.lease_ttl)))
                elif kind == "report":
                    await self.reports.apply(session.node, msg.report, session)
                elif kind == "console":
                    session.deliver_console(msg.console)
                elif kind == "state":
                    session.deliver_state(msg.state)
                elif kind == "event":
                    ev = msg.event
                    await self.events.record(
                        "Partition" if ev.partition else "Node",
                        ev.partition or session.node, ev.reason, ev.message,
                        warning=ev.type == "Warning",
                    )
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except StoreError as err:
            log.warning("session of %s: store error %s", session.node, err)
        finally:
            session.close()

    async def _keepalive(self, session: NodeSession) -> None:
        """Keep the node's lease alive while the agent is heard from.

        A session whose agent went silent for the TTL (frozen, cut off) is ended and its
        lease revoked at once, so the node turns NotReady no later than the agent fences
        itself; a TCP connection that merely stays open keeps nothing alive.
        """
        loop = asyncio.get_running_loop()
        session.last_seen = loop.time()
        interval = max(self.lease_ttl / 6.0, 0.1)
        renewed = loop.time()
        while not session.closed:
            await asyncio.sleep(interval)
            silent = loop.time() - session.last_seen
            if silent > self.lease_ttl:
                log.warning("agent of %s silent for %.1fs; ending its session", session.node,
                            silent)
                session.close()
                # Not awaited here: closing the session ends Session(), whose finally cancels
                # this task, and a revoke cancelled before its thread picked it up left the
                # lease to expire on its own up to a TTL later (NotReady ~2 s late).
                self._revoke_soon(session)
                return
            if loop.time() - renewed < self.lease_ttl / 3.0:
                continue
            renewed = loop.time()
            try:
                ttl = await self.store.etcd.keepalive(session.lease_id)
            except StoreError as err:
                log.warning("lease keepalive for %s failed: %s", session.node, err)
                continue
            if ttl <= 0:
                log.warning("lease of node %s expired; ending its session", session.node)
                session.close()
                return

    def _revoke_soon(self, session: NodeSession) -> None:
        async def revoke() -> None:
            try:
                await self.store.etcd.revoke_lease(session.lease_id)
            except StoreError as err:
                log.warning("revoking the lease of %s failed: %s", session.node, err)

        task = asyncio.create_task(revoke(), name=f"revoke-{session.node}")
        self._revoking.add(task)
        task.add_done_callback(self._revoking.discard)

    async def PullImage(
        self, request: apb.PullImageRequest, context: Context
    ) -> AsyncIterator[apb.ImageChunk]:
        try:
            chunks = await self.store.read_blob(request.digest)
        except StoreError as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
            return
        if not chunks:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no image content {request.digest}")
            return
        for chunk in chunks:
            yield apb.ImageChunk(data=chunk)

    async def PullState(
        self, request: apb.PullStateRequest, context: Context
    ) -> AsyncIterator[apb.StateChunk]:
        """Relay a saved state file from the node that holds it (through whichever replica
        holds that node's session)."""
        node = request.state.node
        session = self.sessions.get(node)
        if session is None:
            holder = await self.store.etcd.get(self.store.keys.node_lease(node))
            address = holder.value.decode() if holder else ""
            if not address or address == self.advertise:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"node {node!r}, which holds the saved state of {request.name!r}, "
                    "is not connected",
                )
                return
            async with grpc.aio.insecure_channel(address) as channel:
                stub = agent_pb2_grpc.AgentGatewayStub(channel)
                relay: Any = stub.PullState(request)
                async for chunk in relay:
                    yield chunk
            return
        async for data in session.state(request.name, request.state.digest):
            if data.error:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"state of {request.name!r} on {node}: {data.error}")
                return
            if data.data:
                yield apb.StateChunk(data=data.data)
