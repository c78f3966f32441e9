"""State tickets: a controller's signed permission for one node to fetch one saved state
straight from the node that holds it.

The source node checks a ticket with a key the controller handed it at Register, so it never
asks etcd (agents do not talk to etcd) nor the controller. Each node's key is derived from a
cluster secret that only the controllers know (kept in etcd), so every replica issues
tickets any source accepts, and a node's key is no use against another node.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from viridian.v1 import agent_pb2 as apb

__all__ = ["MAX_TICKET_BYTES", "TICKET_TTL_S", "Claims", "TicketError", "issue", "node_key",
           "verify"]

TICKET_TTL_S = 120.0
MAX_TICKET_BYTES = 4096
_CONTEXT = b"viridian state tickets v1\0"


class TicketError(Exception):
    """A ticket that must be refused (one line, for PERMISSION_DENIED)."""


@dataclass(frozen=True)
class Claims:
    name: str          # partition
    digest: str        # state file
    source: str        # node that serves it
    destination: str   # node that may fetch it
    expires: float     # unix time


def node_key(secret: bytes, node: str) -> bytes:
    """The HMAC key of `node`'s tickets."""
    return hmac.new(secret, _CONTEXT + node.encode(), hashlib.sha256).digest()


def issue(key: bytes, claims: Claims) -> bytes:
    body = apb.StateTicketClaims(
        name=claims.name, digest=claims.digest, source=claims.source,
        destination=claims.destination,
        expires_unix_ms=round(claims.expires * 1000)).SerializeToString()
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return apb.StateTicket(claims=body, mac=mac).SerializeToString()


def verify(key: bytes, ticket: bytes, source: str, now: float | None = None) -> Claims:
    """The ticket's claims if `key` signed it for this `source` and it has not expired."""
    if not key:
        raise TicketError("this node has no ticket key yet (not registered)")
    if len(ticket) > MAX_TICKET_BYTES:
        raise TicketError("the ticket is too large")
    try:
        outer = apb.StateTicket.FromString(ticket)
        if not hmac.compare_digest(hmac.new(key, outer.claims, hashlib.sha256).digest(),
                                   outer.mac):
            raise TicketError("the ticket's signature does not verify")
        body = apb.StateTicketClaims.FromString(outer.claims)
    except DecodeError:
        raise TicketError("the ticket is not a state ticket") from None
    claims = Claims(body.name, body.digest, body.source, body.destination,
                    body.expires_unix_ms / 1000.0)
    if claims.source != source:
        raise TicketError(f"the ticket is for node {claims.source[:63]!r}, not this one")
    if claims.expires <= (time.time() if now is None else now):
        raise TicketError("the ticket has expired")
    return claims
