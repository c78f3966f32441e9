"""Fakes for the agent tests: a controller (a real grpc.aio AgentGateway server whose
behaviour a test switches), a clock, and waiting on conditions with deadlines.

Run as a script, it serves one fake controller and prints its port (a process a test can
SIGSTOP: TCP stays open and nothing answers).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc

from controller.gateway.admission import RETRY_AFTER_KEY

# What the controller's server must set so that the agent's keepalive pings are welcome.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
]


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


@dataclass
class FakeController(agent_pb2_grpc.AgentGatewayServicer):
    """A controller whose behaviour a test switches: `acks` (answer each heartbeat at
    once), `register_hangs` (Register never answers), `end_after_ack` (end the stream after
    the first ack), `accept_sessions` (send the stream's initial metadata at once, as the
    controller does when it accepts a hello; off: a replica too busy to take the stream),
    `accept_delay` (seconds before accepting: a replica slow to take new streams),
    `refuse_registers` (refuse that many Registers UNAVAILABLE, with `retry_after_ms` as the
    retry hint when set).
    send() pushes any message (an old ack, an assignment) to the session. `pace_ms`, when
    set, goes in every ack as the heartbeat interval asked for."""

    ttl: int = 3
    acks: bool = True
    register_hangs: bool = False
    end_after_ack: bool = False
    accept_sessions: bool = True
    accept_delay: float = 0.0
    refuse_registers: int = 0
    retry_after_ms: int = 0
    register_times: list[float] = field(default_factory=list)
    pace_ms: int = 0
    images: dict[str, bytes] = field(default_factory=dict)
    registers: int = 0
    register_requests: list[apb.RegisterRequest] = field(default_factory=list)
    heartbeats: list[tuple[float, apb.Heartbeat]] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    reports: list[apb.PartitionReport] = field(default_factory=list)
    address: str = ""
    _server: Any = None
    _out: asyncio.Queue[apb.ControllerMessage | None] | None = None

    async def start(self, port: int = 0) -> str:
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(self, self._server)
        bound = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        self.address = f"127.0.0.1:{bound}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    def send(self, msg: apb.ControllerMessage) -> None:
        assert self._out is not None, "no session"
        self._out.put_nowait(msg)

    def ack(self, seq: int) -> None:
        self.send(apb.ControllerMessage(ack=apb.HeartbeatAck(lease_ttl_seconds=self.ttl,
                                                             seq=seq)))

    @property
    def in_session(self) -> bool:
        return self._out is not None

    async def Register(self, request: apb.RegisterRequest,
                       context: Any) -> apb.RegisterResponse:
        self.registers += 1
        self.register_requests.append(request)
        self.register_times.append(time.monotonic())
        if self.registers <= self.refuse_registers:
            hint = ((RETRY_AFTER_KEY, str(self.retry_after_ms)),) if self.retry_after_ms else ()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "busy", trailing_metadata=hint)
        if self.register_hangs:
            await asyncio.sleep(3600)
        return apb.RegisterResponse(session_id=f"s{self.registers}",
                                    lease_ttl_seconds=self.ttl)

    async def Session(self, request_iterator: AsyncIterator[apb.AgentMessage],
                      context: Any) -> AsyncIterator[apb.ControllerMessage]:
        out: asyncio.Queue[apb.ControllerMessage | None] = asyncio.Queue()
        self._out = out
        if self.accept_sessions:
            await asyncio.sleep(self.accept_delay)
            await context.send_initial_metadata(())   # accepted, as the controller does
        reader = asyncio.create_task(self._read(request_iterator, out))
        try:
            while (msg := await out.get()) is not None:
                yield msg
                if msg.HasField("ack") and self.end_after_ack:
                    return
        finally:
            reader.cancel()
            if self._out is out:
                self._out = None

    async def _read(self, it: AsyncIterator[apb.AgentMessage],
                    out: asyncio.Queue[apb.ControllerMessage | None]) -> None:
        try:
            async for msg in it:
                if msg.HasField("report"):
                    self.reports.append(msg.report)
                if not msg.HasField("heartbeat"):
                    continue
                self.heartbeats.append((time.clock_gettime(time.CLOCK_BOOTTIME),
                                        msg.heartbeat))
                if self.acks:
                    self.acked.append(msg.heartbeat.seq)
                    out.put_nowait(apb.ControllerMessage(ack=apb.HeartbeatAck(
                        lease_ttl_seconds=self.ttl, seq=msg.heartbeat.seq,
                        heartbeat_interval_ms=self.pace_ms)))
        finally:
            out.put_nowait(None)

    async def PullImage(self, request: apb.PullImageRequest,
                        context: Any) -> AsyncIterator[apb.ImageChunk]:
        yield apb.ImageChunk(data=self.images[request.digest][request.offset:])

    async def PullState(self, request: apb.PullStateRequest,
                        context: Any) -> AsyncIterator[apb.StateChunk]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no states here")
        yield apb.StateChunk()  # pragma: no cover


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0,
                   step: float = 0.005) -> float:
    """Wait until cond() holds; returns the boot time it was first seen true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def wait_sync(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


async def _serve(ttl: int) -> None:
    controller = FakeController(ttl=ttl)
    address = await controller.start()
    print(address.rsplit(":", 1)[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ttl", type=int, default=3)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.ttl))
    except KeyboardInterrupt:
        sys.exit(0)
