"""The audit of a mutating call never reads gRPC's call once it has ended.

A streaming handler's `finally` can run after gRPC has released the call: when a client
cancels a stream, the abandoned handler generator is closed only when it is collected. grpc's
aio ServicerContext.peer() dereferences the released call, and the test process died of a
segmentation fault there once in CI (a cancelled DrainNode stream, audited late). The fake
context below fails loudly where the real one would crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from controller.security.audit import Auditor
from controller.security.authz import Authenticator, AuthorizationInterceptor

DRAIN = "/viridian.v1.Controller/DrainNode"
CORDON = "/viridian.v1.Controller/CordonNode"


class CallContext:
    """A servicer context whose call can end; reading the call after that is an error."""

    def __init__(self) -> None:
        self.live = True

    def peer(self) -> str:
        if not self.live:
            raise AssertionError("peer() read after the call was released")
        return "ipv4:127.0.0.1:40000"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def code(self) -> None:
        return None


class Events:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def record(self, kind: str, obj: str, reason: str, message: str,
                     warning: bool = False, source: str = "") -> None:
        self.messages.append(message)


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class Request:
    name = "node-a"


def interceptor(events: Events) -> AuthorizationInterceptor:
    return AuthorizationInterceptor(Authenticator(dict, insecure=True),
                                    Auditor(events), agent_port=False)  # type: ignore[arg-type]


def test_a_stream_closed_after_its_call_ended_is_audited_with_the_peer_read_before() -> None:
    async def main() -> list[str]:
        events = Events()
        gate = asyncio.Event()

        async def drain(request: Any, context: Any) -> AsyncIterator[str]:
            yield "first step"
            await gate.wait()  # the client has gone: never set
            yield "never"

        async def continuation(details: Any) -> Any:
            return grpc.unary_stream_rpc_method_handler(drain)

        handler = await interceptor(events).intercept_service(continuation, Details(DRAIN))
        context = CallContext()
        stream = handler.unary_stream(Request(), context)
        assert await stream.__anext__() == "first step"
        context.live = False  # the client cancelled; gRPC released the call
        await stream.aclose()  # the abandoned generator is closed later
        await asyncio.sleep(0)  # the audit event is written by a task
        return events.messages

    messages = asyncio.run(main())
    # aclose() throws GeneratorExit into the handler: an ending the audit calls "error"
    assert messages == ["insecure from ipv4:127.0.0.1:40000: DrainNode node-a -> error"]


@pytest.mark.parametrize("fails", [False, True])
def test_a_unary_call_is_audited_without_reading_the_call_at_the_end(fails: bool) -> None:
    async def main() -> list[str]:
        events = Events()
        context = CallContext()

        async def cordon(request: Any, ctx: Any) -> str:
            context.live = False  # whatever the handler does, the call may end under it
            if fails:
                raise RuntimeError("boom")
            return "done"

        async def continuation(details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(cordon)

        handler = await interceptor(events).intercept_service(continuation, Details(CORDON))
        try:
            await handler.unary_unary(Request(), context)
        except RuntimeError:
            assert fails
        await asyncio.sleep(0)
        return events.messages

    messages = asyncio.run(main())
    outcome = "error" if fails else "ok"
    assert messages == [f"insecure from ipv4:127.0.0.1:40000: CordonNode node-a -> {outcome}"]
