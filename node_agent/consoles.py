"""Serving a partition's console to the controller: a snapshot, or following it until the
guest ends or the request is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from viridian.v1 import agent_pb2 as apb

from node_agent.runtime.workers import WorkerHandle

POLL_S = 0.02
CHUNK = 256 << 10

# (handle or None, still running?, known at all?) of a partition, looked up each time
Lookup = Callable[[str], tuple[WorkerHandle | None, bool, bool]]
Send = Callable[[apb.AgentMessage], None]


async def stream_console(req: apb.ConsoleRequest, lookup: Lookup, send: Send) -> None:
    """Stream partition req.name's console from req.offset into `send`."""
    rid = req.request_id
    offset = req.offset
    while True:
        handle, running, known = lookup(req.name)
        if handle is None:
            if known and running:
                await asyncio.sleep(POLL_S)  # still launching
                continue
            send(apb.AgentMessage(console=apb.ConsoleData(
                request_id=rid, eof=True, offset=offset,
                error="" if known else f"no partition {req.name!r} on this node")))
            return
        data, nxt = await asyncio.to_thread(handle.read_console, offset)
        start = nxt - len(data)
        for i in range(0, len(data), CHUNK):
            send(apb.AgentMessage(console=apb.ConsoleData(
                request_id=rid, data=data[i : i + CHUNK], offset=start + i)))
        offset = nxt
        if not running or not req.follow:
            # eof: for a snapshot (not following), everything there now was sent.
            send(apb.AgentMessage(console=apb.ConsoleData(request_id=rid, eof=True,
                                                          offset=offset)))
            return
        if not data:
            await asyncio.sleep(POLL_S * 2)
