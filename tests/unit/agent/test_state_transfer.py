"""Saved states between nodes, over real gRPC on loopback: a source's StateSource, a fake
controller gateway (tickets and relays), and the destination's StateFetcher. Direct fetches,
resumes at the byte a broken stream reached, the fallback through the controller, refused
digests, sizes and tickets, and the source's credit-bounded sends for a relay."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_fakes import wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller.etcd_server import free_port
from controller.security import tickets
from controller.security.names import node_server_name
from controller.security.pki import issue, make_ca
from controller.security.tls import Dialer, TlsConfig
from node_agent.saved_states import StateSender
from node_agent.state_fetch import StateFetcher
from node_agent.state_server import StateServer, StateSourceService
from node_agent.states import CHUNK, StateError, StateStore

KEY = b"k" * 32
NAME = "p1"


def _put_state(store: StateStore, data: bytes) -> pb.StateRef:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (store.dir(NAME) / f"{digest.removeprefix('sha256:')}.state").write_bytes(data)
    return pb.StateRef(node="node-1", digest=digest, size_bytes=len(data))


class BreakingSource(StateSourceService):
    """A StateSource whose first `breaks` streams die after `after` chunks; records the
    offsets asked for."""

    def __init__(self, store: StateStore, after: int = 0, breaks: int = 0) -> None:
        super().__init__(store, "node-1", lambda: KEY, check_caller=False)
        self.after, self.breaks = after, breaks
        self.offsets: list[int] = []

    async def FetchState(self, request: apb.FetchStateRequest,
                         context: Any) -> AsyncIterator[apb.StateChunk]:
        self.offsets.append(request.offset)
        sent = 0
        async for chunk in super().FetchState(request, context):
            if self.breaks and sent == self.after:
                self.breaks -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
            sent += 1
            yield chunk


class FakeGateway(agent_pb2_grpc.AgentGatewayServicer):
    """The controller's side: tickets for `address`, relays from `store` (the first
    `breaks` relays die after `after` chunks)."""

    def __init__(self, store: StateStore, address: str, after: int = 0, breaks: int = 0,
                 ttl: float = 60.0) -> None:
        self.store, self.address, self.ttl = store, address, ttl
        self.after, self.breaks = after, breaks
        self.relay_offsets: list[int] = []
        self.tickets = 0

    async def GetStateTicket(self, request: apb.GetStateTicketRequest,
                             context: Any) -> apb.GetStateTicketResponse:
        self.tickets += 1
        ticket = tickets.issue(KEY, tickets.Claims(request.name, request.state.digest,
                                                   "node-1", "node-2", time.time() + self.ttl))
        return apb.GetStateTicketResponse(address=self.address, ticket=ticket, source="node-1")

    async def PullState(self, request: apb.PullStateRequest,
                        context: Any) -> AsyncIterator[apb.StateChunk]:
        self.relay_offsets.append(request.offset)
        f, _ = self.store.open(request.name, request.state.digest, request.offset)
        sent = 0
        with f:
            while chunk := f.read(CHUNK):
                if self.breaks and sent == self.after:
                    self.breaks -= 1
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "controller restarted")
                sent += 1
                yield apb.StateChunk(data=chunk)


async def _serve(add: Callable[[grpc.aio.Server], None]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


Scenario = Callable[[StateFetcher, list[tuple[str, str]]], Awaitable[None]]


def _run(gateway: FakeGateway, source: StateSourceService | None,
         scenario: Scenario) -> list[tuple[str, str]]:
    """Run `scenario` with a fetcher wired to the fake gateway (and the source, when given,
    on gateway.address); returns the events the fetcher sent."""
    events: list[tuple[str, str]] = []

    async def main() -> None:
        servers = []
        if source is not None:
            server, gateway.address = await _serve(
                lambda s: agent_pb2_grpc.add_StateSourceServicer_to_server(source, s))
            servers.append(server)
        gw_server, gw_address = await _serve(
            lambda s: agent_pb2_grpc.add_AgentGatewayServicer_to_server(gateway, s))
        servers.append(gw_server)
        async with grpc.aio.insecure_channel(gw_address) as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            fetcher = StateFetcher(Dialer(None), lambda: stub,
                                   lambda p, r, m, w: events.append((r, m)))
            try:
                await scenario(fetcher, events)
            finally:
                for server in servers:
                    await server.stop(0)

    asyncio.run(main())
    return events


def _fetch_into(dest: StateStore, ref: pb.StateRef) -> Scenario:
    async def scenario(fetcher: StateFetcher, _events: list[tuple[str, str]]) -> None:
        rx = dest.receiver(NAME, ref.digest, ref.size_bytes)
        try:
            await fetcher.fetch(NAME, ref, rx)
            rx.finish()
        finally:
            rx.abort()

    return scenario


@pytest.fixture
def stores(tmp_path: Path) -> tuple[StateStore, StateStore]:
    return StateStore(tmp_path / "src"), StateStore(tmp_path / "dst")


DATA = bytes(range(256)) * (5 * CHUNK // 256) + b"tail"   # 5 chunks and a bit


def test_direct_fetch_is_verified_and_kept(stores: tuple[StateStore, StateStore]) -> None:
    src, dst = stores
    ref = _put_state(src, DATA)
    source = BreakingSource(src)
    gateway = FakeGateway(src, "")
    events = _run(gateway, source, _fetch_into(dst, ref))
    kept = dst.path(NAME, ref.digest)
    assert kept is not None and kept.read_bytes() == DATA
    assert source.offsets == [0] and gateway.relay_offsets == []
    assert events[-1][0] == "StateFetched" and "from node-1 directly" in events[-1][1]


def test_broken_direct_stream_resumes_at_its_offset(
        stores: tuple[StateStore, StateStore]) -> None:
    src, dst = stores
    ref = _put_state(src, DATA)
    source = BreakingSource(src, after=3, breaks=1)
    gateway = FakeGateway(src, "")
    events = _run(gateway, source, _fetch_into(dst, ref))
    kept = dst.path(NAME, ref.digest)
    assert kept is not None and kept.read_bytes() == DATA
    assert source.offsets == [0, 3 * CHUNK]
    assert gateway.relay_offsets == [] and gateway.tickets == 2
    assert "directly" in events[-1][1] and "resumed 1 time" in events[-1][1]


def test_unreachable_source_goes_through_the_controller_and_resumes(
        stores: tuple[StateStore, StateStore]) -> None:
    src, dst = stores
    ref = _put_state(src, DATA)
    gateway = FakeGateway(src, f"127.0.0.1:{free_port()}", after=2, breaks=1)  # refused
    events = _run(gateway, None, _fetch_into(dst, ref))
    kept = dst.path(NAME, ref.digest)
    assert kept is not None and kept.read_bytes() == DATA
    assert gateway.relay_offsets == [0, 2 * CHUNK]
    assert "through the controller" in events[-1][1] and "resumed 1 time" in events[-1][1]


def test_wrong_digest_is_refused_and_nothing_kept(
        stores: tuple[StateStore, StateStore]) -> None:
    src, dst = stores
    ref = _put_state(src, DATA)
    # The source holds other bytes under the digest asked for (corrupted on its disk).
    (src.dir(NAME) / f"{ref.digest.removeprefix('sha256:')}.state").write_bytes(
        DATA[:-1] + b"X")
    with pytest.raises(StateError, match="digest"):
        _run(FakeGateway(src, ""), BreakingSource(src), _fetch_into(dst, ref))
    assert dst.path(NAME, ref.digest) is None
    assert not list(dst.dir(NAME).iterdir())


def test_more_bytes_than_the_state_size_are_refused(
        stores: tuple[StateStore, StateStore]) -> None:
    src, dst = stores
    ref = _put_state(src, DATA)
    ref.size_bytes = len(DATA) - 10
    with pytest.raises(StateError, match="more than"):
        _run(FakeGateway(src, ""), BreakingSource(src), _fetch_into(dst, ref))
    assert dst.path(NAME, ref.digest) is None


def _claims(**kw: Any) -> tickets.Claims:
    base: dict[str, Any] = dict(name=NAME, digest="sha256:" + "a" * 64, source="node-1",
                                destination="node-2", expires=time.time() + 60)
    base.update(kw)
    return tickets.Claims(**base)


def test_tickets_verify_only_when_signed_for_this_source_and_fresh() -> None:
    good = tickets.issue(KEY, _claims())
    assert tickets.verify(KEY, good, "node-1").destination == "node-2"
    refused = {
        "expired": (KEY, tickets.issue(KEY, _claims(expires=time.time() - 1)), "node-1"),
        "signature": (b"x" * 32, good, "node-1"),
        "for node": (KEY, good, "node-3"),
        "not a state ticket": (KEY, b"\xff\xff garbage", "node-1"),
        "too large": (KEY, b"\0" * (tickets.MAX_TICKET_BYTES + 1), "node-1"),
        "no ticket key": (b"", good, "node-1"),
    }
    for why, (key, ticket, source) in refused.items():
        with pytest.raises(tickets.TicketError, match=why):
            tickets.verify(key, ticket, source)
    # Each node's key is its own.
    assert tickets.node_key(b"s" * 32, "node-1") != tickets.node_key(b"s" * 32, "node-2")


def _tls(ca: Any, node: str) -> TlsConfig:
    pair = issue(ca, f"node:{node}", [node_server_name(node)])
    return TlsConfig(ca.cert_pem, pair.cert_pem, pair.key_pem)


def test_source_over_tls_refuses_expired_and_misdirected_tickets(tmp_path: Path) -> None:
    """The real StateServer with node certificates: the ticket's destination must be the
    caller, and the caller reaches node-1 only under node-1's server name."""
    src = StateStore(tmp_path / "src")
    ref = _put_state(src, DATA)
    ca = make_ca()
    service = StateSourceService(src, "node-1", lambda: KEY, check_caller=True)

    def ticket(**kw: Any) -> bytes:
        return tickets.issue(KEY, _claims(digest=ref.digest, **kw))

    async def fetch(as_node: str, t: bytes, server_name: str = "node-1") -> bytes:
        dialer = Dialer(_tls(ca, as_node))
        async with dialer.node_channel(address, server_name) as channel:
            stub: Any = agent_pb2_grpc.StateSourceStub(channel)
            return b"".join([c.data async for c in stub.FetchState(
                apb.FetchStateRequest(ticket=t), timeout=10)])

    async def main() -> None:
        nonlocal address
        server = StateServer(service, "127.0.0.1:0", _tls(ca, "node-1"))
        address = f"127.0.0.1:{server.port}"
        await server.start()
        try:
            assert await fetch("node-2", ticket()) == DATA
            for as_node, t in (("node-2", ticket(expires=time.time() - 1)),
                               ("node-3", ticket())):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await fetch(as_node, t)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "state ticket refused" in (err.value.details() or "")
            # A server that is not node-1's (by its certificate) is never trusted.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await fetch("node-2", ticket(), server_name="node-3")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop()

    address = ""
    asyncio.run(main())


def test_sender_keeps_within_the_controllers_credit(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "src")
    ref = _put_state(store, DATA)   # 6 chunks
    sent: list[apb.StateData] = []

    def data() -> int:
        return sum(1 for m in sent if m.data)

    async def main() -> None:
        sender = StateSender(store, lambda: lambda m: sent.append(m.state))
        sender.start(apb.StateRequest(request_id="r", name=NAME, digest=ref.digest,
                                      offset=CHUNK, window=2))
        await wait_for(lambda: data() == 2 and sender._sending["r"].credit == 0, "2 chunks")
        for _ in range(20):   # it stays put without credit, however long we let it run
            await asyncio.sleep(0.005)
        assert data() == 2
        sender.credit(apb.StateCredit(request_id="r", chunks=10))
        await wait_for(lambda: bool(sent) and sent[-1].eof, "eof")
        assert b"".join(m.data for m in sent) == DATA[CHUNK:]
        assert not sent[-1].error

    asyncio.run(main())


def test_sender_stops_when_cancelled(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "src")
    ref = _put_state(store, DATA)
    sent: list[apb.StateData] = []

    async def main() -> None:
        sender = StateSender(store, lambda: lambda m: sent.append(m.state))
        sender.start(apb.StateRequest(request_id="r", name=NAME, digest=ref.digest, window=1))
        await wait_for(lambda: len(sent) == 1, "one chunk")
        task = sender._sending["r"].task
        sender.cancel("r")
        assert task is not None
        await asyncio.gather(task, return_exceptions=True)
        assert "r" not in sender._sending and len(sent) == 1

    asyncio.run(main())


def test_a_taken_state_port_is_an_error_and_wildcards_are_not_announced(
        tmp_path: Path) -> None:
    async def main() -> None:
        service = StateSourceService(StateStore(tmp_path), "node-1", lambda: KEY, False)
        first = StateServer(service, "127.0.0.1:0", None)
        assert first.announced("") == f"127.0.0.1:{first.port}"
        assert first.announced("node-1.lan:7") == "node-1.lan:7"
        with pytest.raises(OSError, match="cannot listen"):
            StateServer(service, f"127.0.0.1:{first.port}", None)
        assert StateServer(service, "0.0.0.0:0", None).announced("") == ""

    asyncio.run(main())
