"""The role names every Viridian server certificate carries (see pki.py for why clients check
these instead of the dialled address). Apart from pki.py so that clients can name them
without importing the cryptography library."""

from __future__ import annotations

__all__ = ["CONTROLLER_NAME", "ETCD_NAME", "node_server_name"]

CONTROLLER_NAME = "viridian-controller"
ETCD_NAME = "viridian-etcd"
NODE_DOMAIN = "nodes.viridian"


def node_server_name(node: str) -> str:
    """The server name a node's certificate carries for its own StateSource: one per node
    (node names are DNS labels), so no node can pose as another or as a controller."""
    return f"{node}.{NODE_DOMAIN}"
