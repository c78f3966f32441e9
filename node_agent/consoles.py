"""Serving a partition's console to the controller: a snapshot, or following it until the
guest ends or the request is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from viridian.v1 import agent_pb2 as apb

from node_agent.runtime.worker_console import RING_CAPACITY, Mark
from node_agent.runtime.workers import WorkerHandle

POLL_S = 0.02
CHUNK = 256 << 10

# (handle or None, still running?, known at all?) of a partition, looked up each time
Lookup = Callable[[str], tuple[WorkerHandle | None, bool, bool]]
Send = Callable[[apb.AgentMessage], None]


def tail_start(data: bytes, end: int, lines: int) -> int:
    """Absolute offset where the last `lines` lines of `data` (which ends at `end`) begin;
    an unfinished last line counts as a line."""
    pos = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return end - len(data)
    return end - len(data) + pos + 1


def since_start(marks: list[Mark], since: float, end: int) -> int:
    """Offset of the first byte written at or after `since` (end: nothing yet)."""
    return next((off for t, off in marks if t >= since), end)


def start_offset(handle: WorkerHandle, req: apb.ConsoleRequest) -> tuple[int, int | None]:
    """Where a request starts: its offset, moved later by tail_lines and since; and, when
    those were worked out, the end of the console they were worked out on (a snapshot stops
    there: `--tail 2` is the last 2 lines when asked, not those and what came since)."""
    offset = req.offset
    if not req.tail_lines and not req.since > 0:
        return offset, None
    data, end = handle.read_console(0)
    if req.tail_lines:
        offset = max(offset, tail_start(data[-RING_CAPACITY:], end, req.tail_lines))
    if req.since > 0:
        offset = max(offset, since_start(handle.console_marks(0, end + 1), req.since, end))
    return offset, end


def _marks(handle: WorkerHandle, start: int, stop: int) -> list[apb.ConsoleMark]:
    return [apb.ConsoleMark(time=t, offset=max(o, start))
            for t, o in handle.console_marks(start, stop)]


async def stream_console(req: apb.ConsoleRequest, lookup: Lookup, send: Send) -> None:
    """Stream partition req.name's console from req.offset into `send`."""
    rid = req.request_id
    offset = req.offset
    stop: int | None = None
    located = False
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
        if not located:
            offset, stop = await asyncio.to_thread(start_offset, handle, req)
            located = True
        data, nxt = await asyncio.to_thread(handle.read_console, offset)
        start = nxt - len(data)
        if stop is not None and not req.follow and nxt > stop:
            data, nxt = data[:max(0, stop - start)], max(stop, start)
        for i in range(0, len(data), CHUNK):
            piece = data[i : i + CHUNK]
            marks = await asyncio.to_thread(_marks, handle, start + i, start + i + len(piece))
            send(apb.AgentMessage(console=apb.ConsoleData(
                request_id=rid, data=piece, offset=start + i, marks=marks)))
        offset = nxt
        if not running or not req.follow:
            # eof: for a snapshot (not following), everything there now was sent.
            send(apb.AgentMessage(console=apb.ConsoleData(request_id=rid, eof=True,
                                                          offset=offset)))
            return
        if not data:
            await asyncio.sleep(POLL_S * 2)
