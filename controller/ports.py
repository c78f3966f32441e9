"""Where a replica serves agents unless told otherwise: its API port + 1 (port 0, a free
port, stays 0). One rule for the server, `viridian up` and the docs."""

from __future__ import annotations

__all__ = ["default_agent_listen"]


def default_agent_listen(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 1}" if int(port) else f"{host}:0"
