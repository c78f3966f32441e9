"""Saved states on the move, as far as a controller replica is involved.

Directly (the normal path): the destination agent asks for a ticket (GetStateTicket) and
fetches the file from the source agent's StateSource; the controller only signs. Through
the controller (the fallback, PullState): the replica holding the source's session reads the
file under credit-based flow control (sessions.py: StateFeed) and passes each chunk on before
granting credit for more, so a relay holds at most a window of chunks; relays are limited
per replica, and each one is recorded as a StateRelayed event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc

from controller.errors import FailedPrecondition, NotFound, PermissionDenied
from controller.gateway.sessions import SessionRegistry
from controller.security import principal as callers
from controller.security import tickets
from controller.security.tls import Dialer
from controller.store import Store
from controller.validation import check_name

log = logging.getLogger(__name__)

TICKET_SECRET = "state-tickets"
MAX_RELAYS = 4   # concurrent relays per replica (each holds at most a window of chunks)


def _check_caller_bound(store: Store, name: str) -> str:
    """The caller's node name ("" on a plaintext server) once `name` is bound to it."""
    caller = callers.current()
    if caller.kind == "node" and store.cache.bound_node(name) != caller.name:
        raise PermissionDenied(f"partition {name[:253]!r} is not bound to node {caller.name!r}")
    return caller.name if caller.kind == "node" else ""


class StateTransfers:
    def __init__(self, store: Store, sessions: SessionRegistry, advertise: str,
                 dialer: Dialer, max_relays: int = MAX_RELAYS) -> None:
        self.store = store
        self.sessions = sessions
        self.advertise = advertise
        self.dialer = dialer
        self._relays = asyncio.Semaphore(max_relays)
        self.relayed = 0   # relays served by this replica (events say which)

    async def node_key(self, node: str) -> bytes:
        """The key node `node` checks its tickets with (handed to it at Register)."""
        return tickets.node_key(await self.store.secrets.ensure(TICKET_SECRET), node)

    async def ticket(self, request: apb.GetStateTicketRequest) -> apb.GetStateTicketResponse:
        check_name("partition", request.name)
        destination = _check_caller_bound(self.store, request.name)
        source = request.state.node
        check_name("node", source)
        node = self.store.cache.nodes.get(source)
        if node is None:
            raise NotFound(f"node {source!r}, which holds the saved state of "
                           f"{request.name!r}, is not known")
        if not node.spec.address:
            raise FailedPrecondition(f"node {source!r} announced no address to fetch saved "
                                     "states from: use PullState")
        expires = time.time() + tickets.TICKET_TTL_S
        ticket = tickets.issue(await self.node_key(source), tickets.Claims(
            request.name, request.state.digest, source, destination, expires))
        at = Timestamp()
        at.FromNanoseconds(int(expires * 1e9))
        return apb.GetStateTicketResponse(address=node.spec.address, ticket=ticket,
                                          expires_at=at, source=source)

    async def relay(self, request: apb.PullStateRequest, context: Any
                    ) -> AsyncIterator[apb.StateChunk]:
        """PullState: the file from the node that holds it, through whichever replica holds
        that node's session."""
        destination = _check_caller_bound(self.store, request.name)
        node = request.state.node
        session = self.sessions.get(node)
        if session is None:
            address = await self.store.nodes.session_holder(node)
            if not address or address == self.advertise:
                raise FailedPrecondition(
                    f"node {node!r}, which holds the saved state of {request.name!r}, "
                    "is not connected")
            # gRPC's own flow control on both hops: one chunk at a time.
            async with self.dialer.aio_channel(address) as channel:
                stub: Any = agent_pb2_grpc.AgentGatewayStub(channel)
                async for chunk in stub.PullState(request):
                    yield chunk
            return
        async with self._relays:
            started = time.monotonic()
            sent = 0
            # aclosing: a receiver that goes away cancels the agent's sending at once.
            feed = session.state(request.name, request.state.digest, request.offset)
            async with aclosing(feed):
                async for data in feed:
                    if data.error:
                        raise FailedPrecondition(
                            f"state of {request.name!r} on {node}: {data.error}")
                    if data.data:
                        sent += len(data.data)
                        yield apb.StateChunk(data=data.data)
            self.relayed += 1
            await self.store.events.record(
                "Partition", request.name, "StateRelayed",
                f"saved state {request.state.digest[:19]} relayed from {node} to "
                f"{destination or 'a node'} by this controller: {sent / (1 << 20):.1f} MiB "
                f"from offset {request.offset} in {time.monotonic() - started:.2f}s")
