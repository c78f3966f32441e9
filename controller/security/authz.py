"""The authorization interceptor: authenticate the caller, check the method's permission,
expose the principal to servicers, and audit every mutating call.

gRPC's asyncio interceptors see the method and metadata but not the TLS peer, so the check
wraps the method handler and runs with the servicer's context (which has both).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from viridian.v1 import types_pb2 as pb

from controller import logs
from controller.security import policy
from controller.security.audit import Auditor
from controller.security.principal import (
    ANONYMOUS,
    INSECURE,
    Principal,
    from_certificate,
    set_current,
)
from controller.security.tokens import parse_token, secret_matches

__all__ = ["Authenticator", "AuthorizationInterceptor"]

log = logging.getLogger(__name__)


class _Refused(Exception):
    """Stands for a refused call in the audit record."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class Authenticator:
    """Maps a call's credentials to a principal. `tokens` is the cache's id -> Token map."""

    def __init__(self, tokens: Callable[[], dict[str, pb.Token]], insecure: bool) -> None:
        self._tokens = tokens
        self.insecure = insecure

    def principal(self, context: Any) -> Principal | None:
        """The caller; ANONYMOUS without credentials; None for credentials that are wrong."""
        if self.insecure:
            return INSECURE
        cert = from_certificate(context.auth_context())
        if cert is not None:
            return cert
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode(errors="replace")
        if not header:
            return ANONYMOUS
        scheme, _, text = header.partition(" ")
        parsed = parse_token(text) if scheme.lower() == "bearer" else None
        if parsed is None:
            return None
        token = self._tokens().get(parsed[0])
        if token is None or not secret_matches(token.secret_sha256, parsed[1]):
            return None
        if token.HasField("expires_at") and token.expires_at.seconds <= time.time():
            return None
        return Principal("user", token.id, token.role)


def request_id(context: Any) -> str:
    """The caller's x-request-id (printable, at most 64 characters) or a fresh one: the
    request_id of the log lines of this call."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            text = value if isinstance(value, str) else value.decode(errors="replace")
            if 0 < len(text) <= 64 and text.isascii() and text.isprintable():
                return text
    return uuid.uuid4().hex[:16]


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, authenticator: Authenticator, auditor: Auditor | None,
                 agent_port: bool) -> None:
        self._auth = authenticator
        self._auditor = auditor
        self._agent_port = agent_port

    async def _refuse(self, method: str, principal: Principal, context: Any, request: Any,
                      code: grpc.StatusCode, message: str) -> None:
        """Abort the call; a refused attempt at a mutating call is audited too."""
        self._audit(method, principal, context.peer(), context, request, _Refused(code))
        await context.abort(code, message)
        raise AssertionError("unreachable")

    async def _admit(self, method: str, context: Any, request: Any = None) -> Principal:
        permission = policy.required(method)
        principal = self._auth.principal(context)
        denied = grpc.StatusCode.PERMISSION_DENIED
        if principal is None:
            await self._refuse(method, ANONYMOUS, context, request,
                               grpc.StatusCode.UNAUTHENTICATED, "invalid or expired token")
            raise AssertionError("unreachable")
        if permission is None:
            await self._refuse(method, principal, context, request, denied,
                               f"{method} is not allowed")
        elif not policy.allowed(principal, method, permission, self._agent_port):
            if principal is ANONYMOUS:
                await self._refuse(
                    method, principal, context, request, grpc.StatusCode.UNAUTHENTICATED,
                    "credentials required: pass a token (--token or VIRIDIAN_TOKEN)")
            await self._refuse(method, principal, context, request, denied,
                               f"{principal} may not call {method.rsplit('/', 1)[-1]}")
        set_current(principal)
        logs.bind_context(request_id=request_id(context))
        return principal

    def _audit(self, method: str, principal: Principal, peer: str, context: Any, request: Any,
               error: BaseException | None) -> None:
        """Record a mutating call. peer was read while the call was live: a handler's
        finally can run after gRPC has released the call (a cancelled stream's generator is
        closed when it is collected), and reading the peer of a released call crashes the
        process (grpc's aio ServicerContext.peer() dereferences the freed call)."""
        if self._auditor is not None and method in policy.MUTATING:
            self._auditor.record(method, principal, peer, context, request, error)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        admit, audit = self._admit, self._audit
        audited = self._auditor is not None and method in policy.MUTATING

        def peer_of(context: Any) -> str:
            """Read at admission, only for audited calls (see _audit)."""
            return context.peer() if audited else ""

        h: Any = handler
        if h.unary_unary is not None:
            inner_uu = h.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                principal = await admit(method, context, request)
                peer = peer_of(context)
                error: BaseException | None = None
                try:
                    return await inner_uu(request, context)
                except BaseException as err:
                    error = err
                    raise
                finally:
                    audit(method, principal, peer, context, request, error)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, h.request_deserializer, h.response_serializer)
        if h.unary_stream is not None:
            inner_us = h.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                principal = await admit(method, context, request)
                peer = peer_of(context)
                error: BaseException | None = None
                try:
                    async for item in inner_us(request, context):
                        yield item
                except BaseException as err:
                    error = err
                    raise
                finally:
                    audit(method, principal, peer, context, request, error)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, h.request_deserializer, h.response_serializer)
        if h.stream_unary is not None:
            inner_su = h.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                principal = await admit(method, context)
                peer = peer_of(context)
                error: BaseException | None = None
                try:
                    return await inner_su(requests, context)
                except BaseException as err:
                    error = err
                    raise
                finally:
                    audit(method, principal, peer, context, None, error)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, h.request_deserializer, h.response_serializer)
        inner_ss = h.stream_stream

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            principal = await admit(method, context)
            peer = peer_of(context)
            error: BaseException | None = None
            try:
                async for item in inner_ss(requests, context):
                    yield item
            except BaseException as err:
                error = err
                raise
            finally:
                audit(method, principal, peer, context, None, error)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, h.request_deserializer, h.response_serializer)
