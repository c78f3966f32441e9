"""Fetching a saved state from the node that holds it: directly when we can reach it, through
the controller otherwise, resuming at the byte the last stream reached.

Directly: a ticket from the controller (GetStateTicket), then the source's StateSource
(FetchState) on the address it announced. If the source cannot be reached (refused,
timed out, TLS refused, ticket refused, no address announced) we go through the controller
(PullState), which relays under flow control. A stream that breaks after it moved bytes is
resumed on the same path from where it stopped. The receiver hashes everything it writes, so
whatever path the bytes took, only the right file is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller.security.tls import Dialer
from node_agent.states import StateError, StateReceiver

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0   # to reach the source at all
STALL_TIMEOUT_S = 15.0    # no chunk for this long: the stream is treated as broken
NO_PROGRESS_S = 60.0      # give up after this long without a byte moved
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0
# Codes that end a fetch at once: asking again, on either path, cannot help.
FINAL = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
                   grpc.StatusCode.INVALID_ARGUMENT})
# A FetchState that failed so without moving a byte: we cannot reach (or talk to) the source.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                         grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED,
                         grpc.StatusCode.UNAUTHENTICATED})
# A GetStateTicket that failed so: the controller cannot send us to the source.
NO_TICKET = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED})

Gateway = Callable[[], agent_pb2_grpc.AgentGatewayStub | None]
Event = Callable[[str, str, str, bool], None]   # partition, reason, message, warning


class _Stalled(Exception):
    pass


class _Unreachable(Exception):
    """The direct path is closed: go through the controller."""


class StateFetcher:
    def __init__(self, dialer: Dialer, gateway: Gateway, event: Event) -> None:
        self.dialer = dialer
        self._gateway = gateway
        self._event = event

    async def fetch(self, name: str, ref: pb.StateRef, rx: StateReceiver) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        direct = True
        resumes = 0
        last_error = "not connected to a controller"
        give_up = loop.time() + NO_PROGRESS_S
        delay = BACKOFF_MIN_S
        while True:
            gw = self._gateway()
            before = rx.offset
            if gw is not None:
                try:
                    if direct:
                        await self._direct(gw, name, ref, rx)
                    else:
                        await self._relay(gw, name, ref, rx)
                    break
                except grpc.aio.AioRpcError as err:
                    last_error = f"{err.code().name}: {err.details() or ''}".strip()
                    if err.code() in FINAL:
                        raise StateError(f"pull of the saved state failed: {last_error}") \
                            from err
                except _Unreachable as err:
                    log.info("cannot fetch the state of %s from %s directly (%s); going "
                             "through the controller", name, ref.node, err)
                    direct = False
                    continue
                except _Stalled:
                    last_error = f"no data for {STALL_TIMEOUT_S:g}s"
            if rx.offset > before:
                give_up = loop.time() + NO_PROGRESS_S
                delay = BACKOFF_MIN_S
                resumes += 1
                log.info("state transfer of %s broke at byte %d (%s); resuming", name,
                         rx.offset, last_error)
                continue
            if loop.time() + delay > give_up:
                raise StateError(f"pull of the saved state failed: {last_error}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        took = time.monotonic() - started
        how = "directly" if direct else "through the controller"
        resumed = f", resumed {resumes} time{'s' * (resumes != 1)}" if resumes else ""
        self._event(name, "StateFetched",
                    f"saved state {ref.digest[:19]} ({rx.offset / (1 << 20):.1f} MiB) "
                    f"fetched from {ref.node} {how} in {took:.2f}s{resumed}", False)

    async def _direct(self, gw: agent_pb2_grpc.AgentGatewayStub, name: str,
                      ref: pb.StateRef, rx: StateReceiver) -> None:
        stub: Any = gw
        try:
            grant: apb.GetStateTicketResponse = await stub.GetStateTicket(
                apb.GetStateTicketRequest(name=name, state=ref), timeout=10.0)
        except grpc.aio.AioRpcError as err:
            if err.code() in NO_TICKET:
                raise _Unreachable(f"no ticket: {err.details()}") from err
            raise
        start = rx.offset
        async with self.dialer.node_channel(grant.address, grant.source) as channel:
            await _connect(channel, grant.address)
            source: Any = agent_pb2_grpc.StateSourceStub(channel)
            try:
                await _drain(source.FetchState(apb.FetchStateRequest(
                    ticket=grant.ticket, offset=rx.offset)), rx)
            except grpc.aio.AioRpcError as err:
                if rx.offset == start and err.code() in UNREACHABLE:
                    raise _Unreachable(f"{grant.address}: {err.code().name} "
                                       f"{err.details() or ''}".strip()) from err
                raise

    async def _relay(self, gw: agent_pb2_grpc.AgentGatewayStub, name: str,
                     ref: pb.StateRef, rx: StateReceiver) -> None:
        stub: Any = gw
        await _drain(stub.PullState(apb.PullStateRequest(name=name, state=ref,
                                                         offset=rx.offset)), rx)


async def _connect(channel: grpc.aio.Channel, address: str) -> None:
    """Connected, or _Unreachable at the first failed attempt (refused, TLS refused) or
    after CONNECT_TIMEOUT_S (a black hole)."""
    ready, failed = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            state = channel.get_state(try_to_connect=True)
            while state != ready:
                if state == failed:
                    raise _Unreachable(f"cannot connect to {address}")
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        raise _Unreachable(f"{address} did not answer within {CONNECT_TIMEOUT_S:g}s") from None


async def _drain(call: Any, rx: StateReceiver) -> None:
    """Write a stream's chunks into the receiver; _Stalled when it goes quiet. Each chunk is
    hashed and written in a thread while the next one arrives (one chunk in hand at most,
    so the sender is still paced by how fast we take them)."""
    chunks: AsyncIterator[apb.StateChunk] = call.__aiter__()
    writing: asyncio.Future[None] | None = None
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), STALL_TIMEOUT_S)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _Stalled from None
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(rx.write, chunk.data))
    finally:
        call.cancel()
        if writing is not None:
            await writing   # the receiver's offset counts only what was written

