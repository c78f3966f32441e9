"""StateSource: this node's saved states, served to other nodes directly.

A destination agent presents a ticket the controller signed (controller/security/
tickets.py) with this node's key, which the controller handed us at Register: we check it
without asking anyone. With TLS the caller must also be the node the ticket names. The file
is streamed from the requested offset one 1 MiB chunk at a time: the next chunk is read only
once gRPC took the previous one, so its flow control paces the reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc

from controller.security import tickets
from controller.security.principal import from_certificate
from controller.security.tls import TlsConfig
from node_agent.states import CHUNK, StateError, StateOffsetError, StateStore

log = logging.getLogger(__name__)

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 << 10),   # requests are a ticket and an offset
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.so_reuseport", 0),   # a port another process holds is an error, not shared
]


class StateSourceService(agent_pb2_grpc.StateSourceServicer):
    def __init__(self, store: StateStore, node: str, key: Callable[[], bytes],
                 check_caller: bool) -> None:
        self.store = store
        self.node = node
        self._key = key
        self._check_caller = check_caller
        self.served = 0   # FetchState calls that sent the whole rest of a file

    async def FetchState(self, request: apb.FetchStateRequest,
                         context: Any) -> AsyncIterator[apb.StateChunk]:
        try:
            claims = tickets.verify(self._key(), request.ticket, self.node)
        except tickets.TicketError as err:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"state ticket refused: {err}")
            return
        if self._check_caller:
            caller = from_certificate(context.auth_context())
            if caller is None or not caller.is_node(claims.destination):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"state ticket refused: it is for node "
                                    f"{claims.destination[:63]!r}, not {caller or 'anonymous'}")
                return
        try:
            f, size = self.store.open(claims.name, claims.digest, request.offset)
        except StateOffsetError as err:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(err))
            return
        except (StateError, OSError) as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
            return
        log.info("serving state %s of %s to %s from offset %d (%d bytes)", claims.digest[:19],
                 claims.name, claims.destination, request.offset, size)
        with f:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield apb.StateChunk(data=chunk)
        self.served += 1


class StateServer:
    """The gRPC server StateSource runs on (its own port, not the controllers')."""

    def __init__(self, service: StateSourceService, listen: str, tls: TlsConfig | None,
                 health: Any = None) -> None:
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        agent_pb2_grpc.add_StateSourceServicer_to_server(service, self.server)
        if health is not None:   # grpc.health.v1 (node_agent/health.py)
            health_pb2_grpc.add_HealthServicer_to_server(health, self.server)
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(listen)
            else:
                self.port = self.server.add_secure_port(
                    listen, tls.server_credentials(require_client_cert=True))
        except RuntimeError:   # grpc's "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {listen} for saved-state transfers")
        self.host = listen.rsplit(":", 1)[0]

    def announced(self, address: str) -> str:
        """What other nodes dial: `address` if given; else the listen address, unless it is
        a wildcard ("": nobody could dial it, so transfers from here go through the
        controller)."""
        if address:
            return address
        if self.host in ("", "0.0.0.0", "[::]", "::"):
            return ""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(0.5)
