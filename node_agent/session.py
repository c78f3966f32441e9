"""One session with one controller: Register (short deadline), then the stream, with
heartbeats numbered by `seq` and acks matched to them.

A session ends on ANY sign that the controller is not serving us: Register failed or timed
out, the stream ended or broke, or a heartbeat was not acked within the ack timeout (a hung
or black-holed controller keeps TCP open and answers nothing). The agent then moves on to
the next controller address (agent.py). Every ack moves the fence's contact deadline to
the acked heartbeat's send time + TTL - margin (fencing.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc

from controller.gateway.admission import RETRY_AFTER_KEY
from controller.security.tls import Dialer
from node_agent.clock import Clock
from node_agent.timing import Timing

log = logging.getLogger(__name__)
RETRY_AFTER_MAX_S = 30.0  # a hint beyond this is a broken or hostile controller's

# HTTP/2 pings find a dead connection even while nothing is sent; the controller's server
# must permit them (keepalive_permit_without_calls, min ping interval <= keepalive_time).
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


class ContactSink(Protocol):
    """Where acknowledged contact goes: the agent's Fence (a simulated agent records it)."""

    def contact(self, sent_at: float, timing: Timing) -> bool:
        """A controller answered a message sent at `sent_at` (see fencing.Fence)."""
        ...


class RegisterRefused(Exception):
    """The controller rejected this node for good (INVALID_ARGUMENT, or PERMISSION_DENIED:
    our certificate names another node)."""


class SessionHost(Protocol):
    """What a session needs from the agent."""

    def register_request(self) -> apb.RegisterRequest: ...

    def heartbeat(self) -> apb.Heartbeat:
        """running and inventory (seq is the session's)."""
        ...

    def handle(self, msg: apb.ControllerMessage) -> None: ...

    def registered(self, reply: apb.RegisterResponse) -> None:
        """A controller accepted the registration (the reply carries the state-ticket key)."""
        ...

    def attach(self, gateway: agent_pb2_grpc.AgentGatewayStub | None,
               outbox: Outbox | None) -> None:
        """Messages go to `outbox` and pulls through `gateway` (None: disconnected)."""
        ...


class Outbox:
    """The messages the stream sends, in two lanes: control (heartbeats, reports, events, in
    the order they were put) goes ahead of bulk data (state files, consoles), so a large
    state transfer cannot delay a heartbeat past the ack timeout, and a heartbeat never
    overtakes a report sent before it."""

    def __init__(self) -> None:
        self._urgent: deque[apb.AgentMessage] = deque()
        self._normal: deque[apb.AgentMessage] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, msg: apb.AgentMessage, urgent: bool = False) -> None:
        if not self._closed:
            (self._urgent if urgent else self._normal).append(msg)
            self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def stream(self, first: apb.AgentMessage) -> AsyncIterator[apb.AgentMessage]:
        yield first
        while True:
            await self._ready.wait()
            if self._closed:
                return
            if self._urgent:
                yield self._urgent.popleft()
            elif self._normal:
                yield self._normal.popleft()
            else:
                self._ready.clear()


class Heartbeats:
    """This session's heartbeats: seq numbers from 1 and the send time of each one not
    acked yet. An ack answers its seq and every earlier one."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.seq = 0
        self._sent: dict[int, float] = {}

    def next(self) -> tuple[int, float]:
        self.seq += 1
        sent_at = self.clock.now()
        self._sent[self.seq] = sent_at
        return self.seq, sent_at

    def acked(self, seq: int) -> float | None:
        """The send time of heartbeat `seq`, or None if it is not one awaiting an ack
        (unknown, or older than one acked already: it proves nothing new)."""
        sent_at = self._sent.get(seq)
        if sent_at is not None:
            for s in [s for s in self._sent if s <= seq]:
                del self._sent[s]
        return sent_at

    def oldest(self) -> int | None:
        """The oldest heartbeat still waiting for its ack."""
        return min(self._sent) if self._sent else None

    def ack_due(self, ack_timeout: float) -> float | None:
        """When the oldest unacked heartbeat's ack timeout runs out (None: none pending)."""
        return min(self._sent.values()) + ack_timeout if self._sent else None


@dataclass
class Outcome:
    """How a session went: acked at least once, why it ended, the timing it was given."""

    acked: bool = False
    why: str = ""
    timing: Timing | None = None
    retry_after: float = 0.0   # the controller asked us to wait this long (busy)


def retry_after(err: grpc.aio.AioRpcError) -> float:
    """Seconds a busy controller asked us to wait before registering again (its refusal's
    trailing metadata, gateway/admission.py), at most RETRY_AFTER_MAX_S; 0 if it did not."""
    metadata: Any = err.trailing_metadata() or ()
    for key, value in metadata:
        if key == RETRY_AFTER_KEY and isinstance(value, str) and value.isdigit():
            return min(int(value[:9]) / 1000.0, RETRY_AFTER_MAX_S)
    return 0.0


class ControllerSession:
    def __init__(self, node: str, address: str, host: SessionHost, fence: ContactSink,
                 clock: Clock, register_timeout: float, stop: asyncio.Event,
                 dialer: Dialer) -> None:
        self.node = node
        self.dialer = dialer
        self.address = address
        self.host = host
        self.fence = fence
        self.clock = clock
        self.register_timeout = register_timeout
        self.stop = stop
        self.beats = Heartbeats(clock)
        self.outcome = Outcome()

    async def run(self) -> Outcome:
        async with self.dialer.aio_channel(self.address, CHANNEL_OPTIONS) as ch:
            gw = agent_pb2_grpc.AgentGatewayStub(ch)
            outbox = Outbox()
            # Reports from now on go to this session (the Register carries the rest).
            self.host.attach(gw, outbox)
            try:
                reply = await self._register(gw)
                if reply is not None:
                    await self._stream(gw, outbox, reply)
            finally:
                outbox.close()
                self.host.attach(None, None)
        return self.outcome

    async def _register(self, gw: agent_pb2_grpc.AgentGatewayStub
                        ) -> apb.RegisterResponse | None:
        stub: Any = gw  # the generated stubs type the sync API
        sent_at = self.clock.now()
        try:
            reply: apb.RegisterResponse = await stub.Register(
                self.host.register_request(), timeout=self.register_timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.PERMISSION_DENIED):
                raise RegisterRefused(err.details() or "invalid registration") from err
            self.outcome.why = f"register: {err.code().name} {err.details() or ''}".strip()
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                self.outcome.retry_after = retry_after(err)
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.outcome.why += (" (not an agent port: agents dial the controllers' "
                                     "--agent-listen port, by default the API port + 1)")
            return None
        self.host.registered(reply)
        timing = Timing.from_reply(reply)
        self.outcome.timing = timing
        self.fence.contact(sent_at, timing)
        return reply

    async def _stream(self, gw: agent_pb2_grpc.AgentGatewayStub, outbox: Outbox,
                      reply: apb.RegisterResponse) -> None:
        hello = apb.AgentMessage(hello=apb.SessionHello(
            node=self.node, session_id=reply.session_id))
        stub: Any = gw
        call: Any = stub.Session(outbox.stream(hello))
        assert self.outcome.timing is not None
        log.info("session established with %s (lease TTL %gs, heartbeat %gs, ack timeout "
                 "%gs, fence margin %gs)", self.address, self.outcome.timing.ttl,
                 self.outcome.timing.heartbeat, self.outcome.timing.ack_timeout,
                 self.outcome.timing.margin)
        tasks = [asyncio.create_task(self._read(call), name="session-read"),
                 asyncio.create_task(self._pump(call, outbox), name="session-heartbeat"),
                 asyncio.create_task(self.stop.wait(), name="session-stop")]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            call.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.stop.is_set():
            self.outcome.why = self.outcome.why or "agent stopping"
        else:
            log.warning("session with %s ended: %s", self.address, self.outcome.why)

    async def _read(self, call: Any) -> None:
        try:
            async for msg in call:
                if msg.HasField("ack"):
                    self._ack(msg.ack)
                else:
                    self.host.handle(msg)
            self.outcome.why = "the controller ended the session"
        except grpc.aio.AioRpcError as err:
            self.outcome.why = f"{err.code().name} {err.details() or ''}".strip()
        except Exception as err:  # a bug handling a message: log it, start afresh
            log.exception("handling a message from %s failed", self.address)
            self.outcome.why = f"internal error: {err}"

    def _ack(self, ack: apb.HeartbeatAck) -> None:
        timing = self.outcome.timing
        assert timing is not None
        if ack.lease_ttl_seconds:
            timing = self.outcome.timing = timing.with_ttl(float(ack.lease_ttl_seconds))
        if ack.heartbeat_interval_ms or ack.ack_timeout_ms:
            timing = self.outcome.timing = timing.with_pace(ack.heartbeat_interval_ms,
                                                            ack.ack_timeout_ms)
        sent_at = self.beats.acked(ack.seq)
        if sent_at is None:
            return  # not an answer to a heartbeat we wait for: proves nothing new
        self.outcome.acked = True
        self.fence.contact(sent_at, timing)

    async def _accepted(self, call: Any) -> bool:
        """Wait until the controller accepts the session (it sends the stream's initial
        metadata once it has checked the hello), as long as the Register was given (its
        timeout grows after whole rounds of controllers failed) but at least an ack
        timeout.

        Why wait at all: heartbeat 1's ack timeout used to run from the moment the stream
        was asked for, so it also paid for the stream's setup. At a mass registration
        (thousands of agents within seconds) setting up took up to 2 s on a busy replica,
        the first heartbeat "was not acked" though nothing was wrong, and every such agent
        registered again, which made the replica busier still.

        Why as long as a Register: new streams queue behind new Registers on the replica.
        Giving a stream less patience than the Register before it wasted the Register
        whenever that queue was long: 5,000 agents then kept registering, 580 a second,
        and none of them held a session (bench/scale.py). Waiting longer costs no safety:
        the fence keeps its own deadline, whatever the session does."""
        timing = self.outcome.timing
        assert timing is not None
        patience = max(timing.ack_timeout, self.register_timeout)
        try:
            async with asyncio.timeout(patience):
                await call.initial_metadata()
        except TimeoutError:
            self.outcome.why = f"the session was not accepted within {patience:g}s"
            return False
        return True

    async def _pump(self, call: Any, outbox: Outbox) -> None:
        """Once the session is accepted, send heartbeats on time; return when one was not
        acked within the timeout (or the session was not accepted in time)."""
        if not await self._accepted(call):
            return
        next_beat = self.clock.now()  # the first at once: contact is proven early
        while True:
            timing = self.outcome.timing
            assert timing is not None
            now = self.clock.now()
            due = self.beats.ack_due(timing.ack_timeout)
            if due is not None and now >= due:
                self.outcome.why = (f"heartbeat {self.beats.oldest()} not acked within "
                                    f"{timing.ack_timeout:g}s")
                return
            if now >= next_beat:
                beat = self.host.heartbeat()
                beat.seq, sent_at = self.beats.next()
                outbox.put(apb.AgentMessage(heartbeat=beat), urgent=True)
                next_beat = sent_at + timing.heartbeat
                due = self.beats.ack_due(timing.ack_timeout)
            wake = next_beat if due is None else min(next_beat, due)
            await asyncio.sleep(max(wake - self.clock.now(), 0.005))
