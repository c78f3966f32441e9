"""Who is calling: a verified client certificate (nodes, controllers) or a bearer token."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from viridian.v1 import types_pb2 as pb

__all__ = ["ANONYMOUS", "INSECURE", "Principal", "current", "from_certificate", "set_current"]

ROLE_NAMES: dict[pb.Role.ValueType, str] = {
    pb.ROLE_ADMIN: "admin", pb.ROLE_OPERATOR: "operator", pb.ROLE_VIEWER: "viewer",
    pb.ROLE_NODE_JOIN: "node-join"}


@dataclass(frozen=True)
class Principal:
    kind: str                       # "user", "node", "controller", "anonymous", "insecure"
    name: str                       # token id, node name or controller identity
    role: pb.Role.ValueType = pb.ROLE_UNSPECIFIED  # users' role (pb.Role)

    def __str__(self) -> str:
        if self.kind == "user":
            return f"token:{self.name}({ROLE_NAMES.get(self.role, '?')})"
        return f"{self.kind}:{self.name}" if self.name else self.kind

    def is_node(self, name: str) -> bool:
        return self.kind == "node" and self.name == name


ANONYMOUS = Principal("anonymous", "")
#: Every caller of a server started with --insecure: no identity to check.
INSECURE = Principal("insecure", "")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "viridian_principal", default=ANONYMOUS)


def current() -> Principal:
    """The principal of the RPC being served (set by the authorization interceptor)."""
    return _current.get()


def set_current(principal: Principal) -> None:
    _current.set(principal)


def from_certificate(auth_context: Any) -> Principal | None:
    """The identity in a verified client certificate's common name ("node:NAME",
    "controller:ID"), or None without one."""
    names = auth_context.get("x509_common_name") if auth_context else None
    if not names:
        return None
    text = names[0].decode(errors="replace") if isinstance(names[0], bytes) else str(names[0])
    kind, sep, name = text.partition(":")
    if not sep or kind not in ("node", "controller") or not name:
        return None
    return Principal(kind, name)
