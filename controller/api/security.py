"""Public API: tokens (admin only) and node joins (a join token buys a node certificate)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.errors import FailedPrecondition, InvalidArgument
from controller.grpc_errors import Context, map_errors
from controller.security import principal as callers
from controller.security.names import node_server_name
from controller.security.pki import CertError, sign_csr
from controller.security.tokens import new_token, secret_digest
from controller.store import now_ts
from controller.validation import check_name

ROLES = (pb.ROLE_ADMIN, pb.ROLE_OPERATOR, pb.ROLE_VIEWER, pb.ROLE_NODE_JOIN)
JOIN_TTL_DEFAULT_S = 3600
MAX_TTL_S = 10 * 365 * 86400
MAX_DESCRIPTION = 200
MAX_CSR_BYTES = 16 << 10
CACHE_WAIT_S = 30.0  # at most, for a new token to reach the cache (no caller deadline)


def _public(token: pb.Token) -> pb.Token:
    out = pb.Token()
    out.CopyFrom(token)
    out.ClearField("secret_sha256")
    return out


class SecurityApi:
    ctx: ApiContext

    @map_errors
    async def CreateToken(self, request: cpb.CreateTokenRequest,
                          context: Context) -> cpb.CreateTokenResponse:
        if request.role not in ROLES:
            raise InvalidArgument("role must be admin, operator, viewer or node-join")
        if len(request.description) > MAX_DESCRIPTION or not request.description.isprintable():
            raise InvalidArgument(
                f"a description is at most {MAX_DESCRIPTION} printable characters")
        ttl = request.ttl_seconds
        if request.role == pb.ROLE_NODE_JOIN and ttl == 0:
            ttl = JOIN_TTL_DEFAULT_S
        if ttl > MAX_TTL_S:
            raise InvalidArgument("ttl is at most 10 years")
        token_id, text = new_token()
        token = pb.Token(id=token_id, role=request.role, description=request.description,
                         created_at=now_ts(), created_by=str(callers.current()),
                         secret_sha256=secret_digest(text.split(".", 1)[1]))
        if ttl:
            # The whole TTL from the creation instant (seconds alone cut up to one off it).
            token.expires_at.CopyFrom(Timestamp(seconds=token.created_at.seconds + ttl,
                                                nanos=token.created_at.nanos))
        revision = await self.ctx.store.tokens.create(token)
        # Callers authenticate against this replica's watch-fed cache: answer once the token
        # is in it, so a token works as soon as CreateToken returns; on a busy replica that
        # may take longer than 2 s, so wait until just before the caller's deadline.
        left = context.time_remaining()
        await self.ctx.store.cache.wait_for_revision(
            revision, CACHE_WAIT_S if left is None else max(left - 0.2, 0.1))
        return cpb.CreateTokenResponse(token=_public(token), secret=text)

    @map_errors
    async def ListTokens(self, request: cpb.ListTokensRequest,
                         context: Context) -> cpb.ListTokensResponse:
        tokens = sorted(await self.ctx.store.tokens.read_all(), key=lambda t: t.id)
        return cpb.ListTokensResponse(tokens=[_public(t) for t in tokens])

    @map_errors
    async def DeleteToken(self, request: cpb.DeleteTokenRequest,
                          context: Context) -> cpb.DeleteTokenResponse:
        await self.ctx.store.tokens.delete(request.id)
        return cpb.DeleteTokenResponse()

    @map_errors
    async def JoinNode(self, request: cpb.JoinNodeRequest,
                       context: Context) -> cpb.JoinNodeResponse:
        check_name("node", request.node)
        if self.ctx.ca is None:
            raise FailedPrecondition(
                "this controller cannot sign node certificates (started without --ca-key)")
        if len(request.csr_pem) > MAX_CSR_BYTES:
            raise InvalidArgument("the certificate request is too large")
        if self.ctx.store.cache.node_alive(request.node):
            raise FailedPrecondition(
                f"node {request.node!r} is connected: a join cannot take over a live node's "
                "name (remove the node first, or pick another name)")
        try:
            # Also a server certificate: the node serves its saved states to other nodes.
            cert = sign_csr(self.ctx.ca, request.csr_pem, f"node:{request.node}",
                            server_names=[node_server_name(request.node)])
        except CertError as err:
            raise InvalidArgument(str(err)) from err
        return cpb.JoinNodeResponse(certificate_pem=cert, ca_pem=self.ctx.ca.cert_pem)
