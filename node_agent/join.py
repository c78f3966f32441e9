"""Joining a cluster: trade a join token for a certificate that names this node.

The agent makes its own key (it never leaves the node), sends a certificate request with
the token to a controller's public port over TLS pinned to the cluster CA, and keeps the
returned certificate in its PKI directory. Later starts reuse it.
"""

from __future__ import annotations

import grpc
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import controller_pb2_grpc

from controller.security.files import PkiDir, write_private
from controller.security.pki import make_csr
from controller.security.tls import controller_options, token_credentials

__all__ = ["JoinError", "join"]

JOIN_TIMEOUT_S = 10.0


class JoinError(Exception):
    """The join failed (one line, for the log)."""


def join(pki: PkiDir, node: str, addresses: list[str], token: str) -> None:
    """Obtain cert.pem/key.pem for `node` in `pki` (which must already hold ca.pem)."""
    try:
        ca_pem = pki.ca.read_bytes()
    except OSError as err:
        raise JoinError(f"joining needs the cluster CA at {pki.ca}: {err.strerror}") from err
    csr, key = make_csr(f"node:{node}")
    credentials = token_credentials(ca_pem, token)
    problems: list[str] = []
    for address in addresses:
        with grpc.secure_channel(address, credentials, options=controller_options()) as ch:
            stub = controller_pb2_grpc.ControllerStub(ch)
            try:
                reply = stub.JoinNode(cpb.JoinNodeRequest(node=node, csr_pem=csr),
                                      timeout=JOIN_TIMEOUT_S)
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.Call) else None
                details = err.details() if isinstance(err, grpc.Call) else str(err)
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    problems.append(f"{address}: {details}")
                    continue
                raise JoinError(f"join refused by {address}: {details}") from err
        write_private(pki.key, key)
        pki.cert.write_bytes(reply.certificate_pem)
        return
    raise JoinError("no controller answered the join: " + "; ".join(problems))
