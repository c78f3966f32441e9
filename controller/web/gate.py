"""Calls from the web console into the gRPC servicer: who the caller is, whether the role
policy lets them make the call, and a stand-in for the servicer context.

The JSON API runs the very servicer methods the gRPC server runs (controller/api), so a
request goes through the same checks, actions and error mapping; only the transport
differs. `WebCall` is the part of grpc's ServicerContext those methods, the Authenticator
and the Auditor use: metadata (the Authorization header), the peer, and abort (raised here
as `CallAborted`, turned into a JSON error by the HTTP layer).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from controller.security import policy
from controller.security.audit import Auditor
from controller.security.authz import Authenticator
from controller.security.principal import ANONYMOUS, Principal, set_current

__all__ = ["CallAborted", "Gate", "WebCall"]

_CONTROLLER = "/viridian.v1.Controller/"


class CallAborted(Exception):
    """A call ended with a gRPC status (refused, or the servicer aborted it)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = code
        self.message = message

    def code(self) -> grpc.StatusCode:
        return self.status


class WebCall:
    """One HTTP request seen as a servicer context."""

    def __init__(self, authorization: str, peer: str) -> None:
        self._metadata = (("authorization", authorization),) if authorization else ()
        self._peer = peer
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no client certificates on the web port: users only

    def peer(self) -> str:
        return f"web:{self._peer}"

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        self._code = code
        raise CallAborted(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


class Gate:
    """Admits a web call to a Controller method under the public port's role policy and
    audits mutating calls, as the gRPC AuthorizationInterceptor does."""

    def __init__(self, authenticator: Authenticator, auditor: Auditor | None) -> None:
        self._auth = authenticator
        self._auditor = auditor

    def admit(self, rpc: str, call: WebCall, request: Any) -> Principal:
        """The caller, allowed to call `rpc`; raises CallAborted otherwise (audited, with
        the request it refused, when the call would have changed something)."""
        method = _CONTROLLER + rpc
        permission = policy.required(method)
        principal = self._auth.principal(call)
        if principal is None:
            self._refused(method, ANONYMOUS, call, request, grpc.StatusCode.UNAUTHENTICATED,
                          "invalid or expired token")
        if permission is None:
            self._refused(method, principal, call, request, grpc.StatusCode.PERMISSION_DENIED,
                          f"{rpc} is not allowed")
        if not policy.allowed(principal, method, permission, agent_port=False):
            if principal is ANONYMOUS:
                self._refused(method, principal, call, request, grpc.StatusCode.UNAUTHENTICATED,
                              "credentials required: send Authorization: Bearer ID.SECRET")
            self._refused(method, principal, call, request, grpc.StatusCode.PERMISSION_DENIED,
                          f"{principal} may not call {rpc}")
        set_current(principal)
        return principal

    def audit(self, rpc: str, principal: Principal, call: WebCall, request: Any,
              error: BaseException | None) -> None:
        method = _CONTROLLER + rpc
        if self._auditor is not None and method in policy.MUTATING:
            self._auditor.record(method, principal, call.peer(), call, request, error)

    def _refused(self, method: str, principal: Principal | None, call: WebCall, request: Any,
                 code: grpc.StatusCode, message: str) -> NoReturn:
        error = CallAborted(code, message)
        call.set_code(code)
        if self._auditor is not None and method in policy.MUTATING:
            self._auditor.record(method, principal or ANONYMOUS, call.peer(), call, request,
                                 error)
        raise error
