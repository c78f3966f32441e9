"""A fake controller for image pulls: a real grpc.aio AgentGateway server on loopback whose
PullImage serves blob files by digest from an offset, in chunks read from disk, and can be
told to break a stream (an UNAVAILABLE abort, or the whole server going away and coming
back on the same port), to stall, or to hold every stream until released."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc

CHUNK = 1 << 20


class BlobGateway(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, chunk: int = CHUNK) -> None:
        self.chunk = chunk
        self.blobs: dict[str, Path] = {}
        self.sent = 0                       # bytes handed to the transport, all calls
        self.calls: list[int] = []          # the offset each call asked for
        self.break_after: int | None = None  # abort the next call after this many bytes
        self.stall_after: int | None = None  # the next call stops sending after this many
        self.on_sent: Callable[[int], None] | None = None  # called with self.sent per chunk
        self.gate: asyncio.Event | None = None  # calls wait for it before sending
        self.address = ""
        self._server: Any = None
        self._port = 0

    async def start(self) -> str:
        self._server = grpc.aio.server()
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(self, self._server)
        self._port = self._server.add_insecure_port(f"127.0.0.1:{self._port}")
        await self._server.start()
        self.address = f"127.0.0.1:{self._port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def restart(self) -> None:
        """The controller goes away (every stream breaks) and comes back on its port."""
        await self.stop()
        await self.start()

    async def PullImage(self, request: apb.PullImageRequest,
                        context: Any) -> AsyncIterator[apb.ImageChunk]:
        self.calls.append(request.offset)
        path = self.blobs.get(request.digest)
        if path is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no blob {request.digest}")
            return
        if request.offset > path.stat().st_size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "offset past the end")
            return
        if self.gate is not None:
            await self.gate.wait()
        here = 0
        with path.open("rb") as src:
            src.seek(request.offset)
            while piece := src.read(self.chunk):
                if self.break_after is not None and here >= self.break_after:
                    self.break_after = None
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the stream broke")
                    return
                if self.stall_after is not None and here >= self.stall_after:
                    self.stall_after = None
                    await asyncio.Event().wait()
                yield apb.ImageChunk(data=piece)
                here += len(piece)
                self.sent += len(piece)
                if self.on_sent is not None:
                    self.on_sent(self.sent)


class GatewayClient:
    """A channel to the gateway, as the agent's session holds one."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.initial_reconnect_backoff_ms", 100),
                              ("grpc.min_reconnect_backoff_ms", 100),
                              ("grpc.max_reconnect_backoff_ms", 500)])
        self.stub = agent_pb2_grpc.AgentGatewayStub(self.channel)

    def __call__(self) -> agent_pb2_grpc.AgentGatewayStub:
        return self.stub

    async def close(self) -> None:
        await self.channel.close()
