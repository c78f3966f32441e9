"""A relay's flow control on the controller's side (NodeSession.state): the agent is asked
for a window of chunks, granted more only as the receiver takes them, broken off if it sends
past its credit, and told to stop when the receiver goes away."""

from __future__ import annotations

import asyncio

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.gateway.sessions import NodeSession

DIGEST = "sha256:" + "a" * 64


def _sent(session: NodeSession) -> list[apb.ControllerMessage]:
    out = []
    while not session.outgoing.empty():
        msg = session.outgoing.get_nowait()
        assert msg is not None
        out.append(msg)
    return out


def _chunk(rid: str, n: int) -> apb.StateData:
    return apb.StateData(request_id=rid, data=bytes([n]) * 10)


def test_credit_is_granted_as_the_receiver_takes_chunks() -> None:
    async def main() -> None:
        session = NodeSession("node-1", "s", 0, 0)
        feed = session.state("p", DIGEST, offset=7, window=4)
        first = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0)
        (request,) = _sent(session)
        req = request.state
        assert (req.name, req.digest, req.offset, req.window) == ("p", DIGEST, 7, 4)
        for n in range(4):                       # the whole window, before anything is taken
            session.deliver_state(_chunk(req.request_id, n))
        assert (await first).data == bytes([0]) * 10
        assert _sent(session) == []              # nothing taken past the first: no credit
        assert (await anext(feed)).data == bytes([1]) * 10
        assert (await anext(feed)).data == bytes([2]) * 10
        credits = _sent(session)                 # two taken (half the window): two granted
        assert [m.state_credit.chunks for m in credits] == [2]
        for n in (4, 5):                         # within the new credit
            session.deliver_state(_chunk(req.request_id, n))
        session.deliver_state(_chunk(req.request_id, 6))   # one past it
        got = [await anext(feed) for _ in range(4)]
        assert [g.data[0] for g in got[:3]] == [3, 4, 5]
        assert got[3].eof and "more than its credit" in got[3].error
        await feed.aclose()
        assert not session.states

    asyncio.run(main())


def test_a_receiver_that_goes_away_cancels_the_request() -> None:
    async def main() -> None:
        session = NodeSession("node-1", "s", 0, 0)
        feed = session.state("p", DIGEST)
        first = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0)
        (request,) = _sent(session)
        session.deliver_state(_chunk(request.state.request_id, 1))
        await first
        await feed.aclose()
        (cancel,) = _sent(session)
        assert cancel.state_cancel.request_id == request.state.request_id
        assert not session.states

    asyncio.run(main())


def test_a_finished_request_is_not_cancelled() -> None:
    async def main() -> None:
        session = NodeSession("node-1", "s", 0, 0)
        feed = session.state("p", DIGEST)
        first = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0)
        (request,) = _sent(session)
        session.deliver_state(apb.StateData(request_id=request.state.request_id, eof=True))
        assert (await first).eof
        await feed.aclose()
        assert _sent(session) == []

    asyncio.run(main())


class _Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    async def record(self, kind: str, obj: str, reason: str, message: str) -> None:
        self.recorded.append((obj, reason, message))


class _Store:
    def __init__(self) -> None:
        self.events = _Events()


def test_relays_per_replica_are_bounded_and_recorded() -> None:
    """With room for one relay, a second one asks its node for nothing until the first is
    done; each finished relay is a StateRelayed event."""
    from typing import Any

    from controller.gateway.sessions import SessionRegistry
    from controller.gateway.state_transfer import StateTransfers
    from controller.security.tls import Dialer

    async def main() -> None:
        sessions = SessionRegistry()
        session = NodeSession("node-1", "s", 0, 0)
        sessions.attach(session)
        store: Any = _Store()
        transfers = StateTransfers(store, sessions, "me:1", Dialer(None), max_relays=1)

        def pull(name: str) -> apb.PullStateRequest:
            return apb.PullStateRequest(name=name, state=pb.StateRef(node="node-1",
                                                                    digest=DIGEST))

        async def drain(name: str) -> list[bytes]:
            return [c.data async for c in transfers.relay(pull(name), None)]

        first = asyncio.create_task(drain("a"))
        second = asyncio.create_task(drain("b"))
        for _ in range(10):
            await asyncio.sleep(0)
        requests = _sent(session)
        assert [m.state.name for m in requests] == ["a"]     # "b" waits for a slot
        rid = requests[0].state.request_id
        session.deliver_state(_chunk(rid, 1))
        session.deliver_state(apb.StateData(request_id=rid, eof=True))
        assert await first == [bytes([1]) * 10]
        for _ in range(10):
            await asyncio.sleep(0)
        (request_b,) = _sent(session)
        assert request_b.state.name == "b"
        session.deliver_state(apb.StateData(request_id=request_b.state.request_id, eof=True))
        assert await second == []
        assert [(o, r) for o, r, _ in store.events.recorded] == [("a", "StateRelayed"),
                                                                  ("b", "StateRelayed")]
        assert "relayed from node-1" in store.events.recorded[0][2]

    asyncio.run(main())
