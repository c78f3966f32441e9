"""Agent sessions held by this replica: one outgoing queue per node, console request routing,
and saved states read from an agent under credit-based flow control."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

from viridian.v1 import agent_pb2 as apb

log = logging.getLogger(__name__)

#: Chunks (of at most 1 MiB) an agent may send for one state request before it is granted
#: more: what a relay can hold in this replica's memory at most.
STATE_WINDOW = 8
#: Partitions a usage report may name (more than a node can run; the rest is ignored).
MAX_USAGE = 4096


@dataclass
class StateFeed:
    """The chunks of one StateRequest on their way through this replica. The agent may have
    at most `granted - received` chunks in flight; one past that breaks the request."""

    window: int
    queue: asyncio.Queue[apb.StateData] = field(default_factory=asyncio.Queue)
    granted: int = 0
    received: int = 0
    broken: bool = False

    def deliver(self, data: apb.StateData) -> None:
        if self.broken:
            return
        if data.data:
            self.received += 1
            if self.received > self.granted:
                self.broken = True
                data = apb.StateData(request_id=data.request_id, eof=True,
                                     error="the node sent more than its credit allowed")
        self.queue.put_nowait(data)


@dataclass
class NodeSession:
    """One agent's session on this replica and what this replica told it."""

    node: str
    session_id: str
    lease: int   # the replica's node lease the node's lease key is attached to
    claim: int   # the revision the registration wrote that key at (liveness.py)
    released: bool = False   # its key was (or is being) deleted
    outgoing: asyncio.Queue[apb.ControllerMessage | None] = field(default_factory=asyncio.Queue)
    # partition -> the epoch the agent was told to run (an assignment sent, or a copy it
    # reported): a copy whose binding no longer matches is told to FORGET that epoch.
    # Changed through assign()/forget() only, which keep the registry's index current.
    assigned: dict[str, int] = field(default_factory=dict)
    # the registry's partition -> nodes index (set when attached)
    index: dict[str, set[str]] | None = None
    # (partition, epoch) -> the last lifecycle command sent (STOP, PAUSE, RESUME, SAVE) and
    # its stop grace (a shorter grace for a stop under way is sent again: Turn Off)
    commands: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    checkpoints: set[tuple[str, int, str]] = field(default_factory=set)  # requested
    states: dict[str, StateFeed] = field(default_factory=dict)
    consoles: dict[str, asyncio.Queue[apb.ConsoleData]] = field(default_factory=dict)
    closed: bool = False
    last_seen: float = 0.0  # loop time of the agent's last message
    # heartbeats: the newest seq received and when; acks go out after a lease renewal
    # begun after that (liveness.py)
    beat_seq: int = 0
    beat_at: float = 0.0
    forgotten: dict[tuple[str, int], float] = field(default_factory=dict)  # FORGETs sent
    # the newest resource use the agent reported, per partition (memory only, never etcd)
    usage: dict[str, apb.PartitionUsage] = field(default_factory=dict)

    def record_usage(self, report: apb.UsageReport) -> None:
        """Keep the newest sample of each partition the report names (at most MAX_USAGE):
        a partition missing from it no longer runs here."""
        self.usage = {u.name: u for u in report.partitions[:MAX_USAGE] if u.name}

    def send(self, msg: apb.ControllerMessage) -> None:
        if not self.closed:
            self.outgoing.put_nowait(msg)

    def assign(self, name: str, epoch: int) -> None:
        """Record that the agent was told to run (or runs) `name` at `epoch`."""
        self.assigned[name] = epoch
        if self.index is not None:
            self.index.setdefault(name, set()).add(self.node)

    def forget(self, name: str, epoch: int, purge: bool = False) -> None:
        """Tell the agent to stop and drop its copy of `name` at `epoch`."""
        self.send(apb.ControllerMessage(command=apb.PartitionCommand(
            name=name, epoch=epoch, kind=apb.PartitionCommand.KIND_FORGET, purge=purge)))
        if self.assigned.get(name) == epoch:
            del self.assigned[name]   # (the index entry goes when next looked up)
        self.commands = {k: v for k, v in self.commands.items() if k[0] != name}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outgoing.put_nowait(None)
            for q in self.consoles.values():
                q.put_nowait(apb.ConsoleData(eof=True, error="the node's session ended"))
            for feed in self.states.values():
                feed.queue.put_nowait(apb.StateData(eof=True, error="the node's session ended"))

    def deliver_console(self, data: apb.ConsoleData) -> None:
        q = self.consoles.get(data.request_id)
        if q is not None:
            q.put_nowait(data)

    async def console(self, name: str, offset: int, follow: bool, tail_lines: int = 0,
                      since: float = 0.0) -> AsyncIterator[apb.ConsoleData]:
        """Ask the agent for a partition's console; yields chunks until eof or cancel."""
        request_id = uuid.uuid4().hex
        q: asyncio.Queue[apb.ConsoleData] = asyncio.Queue()
        self.consoles[request_id] = q
        self.send(
            apb.ControllerMessage(
                console=apb.ConsoleRequest(
                    request_id=request_id, name=name, offset=offset, follow=follow,
                    tail_lines=tail_lines, since=since,
                )
            )
        )
        try:
            while True:
                data = await q.get()
                yield data
                if data.eof or data.error:
                    return
        finally:
            self.consoles.pop(request_id, None)
            if follow and not self.closed:
                self.send(
                    apb.ControllerMessage(console_cancel=apb.ConsoleCancel(request_id=request_id))
                )

    def deliver_state(self, data: apb.StateData) -> None:
        feed = self.states.get(data.request_id)
        if feed is not None:
            feed.deliver(data)

    async def state(self, name: str, digest: str, offset: int = 0,
                    window: int = STATE_WINDOW) -> AsyncGenerator[apb.StateData, None]:
        """Ask the agent for a saved state file from `offset`; yields chunks until eof or
        error. Credit-based: the agent sends at most `window` chunks ahead, and credit for
        more goes out only as the consumer takes chunks (once it has passed them on), so a
        slow receiver holds the agent back instead of filling this replica's memory."""
        request_id = uuid.uuid4().hex
        feed = StateFeed(window=window, granted=window)
        self.states[request_id] = feed
        self.send(apb.ControllerMessage(state=apb.StateRequest(
            request_id=request_id, name=name, digest=digest, offset=offset, window=window)))
        finished = False
        taken = 0
        try:
            while True:
                data = await feed.queue.get()
                if data.eof or data.error:
                    finished = True
                yield data
                if finished:
                    return
                taken += 1
                # Credit in batches of half the window: fewer messages, never a stall.
                if taken * 2 >= window:
                    feed.granted += taken
                    self.send(apb.ControllerMessage(state_credit=apb.StateCredit(
                        request_id=request_id, chunks=taken)))
                    taken = 0
        finally:
            self.states.pop(request_id, None)
            if not finished:
                self.send(apb.ControllerMessage(
                    state_cancel=apb.StateCancel(request_id=request_id)))


class SessionRegistry:
    """The sessions this replica holds, by node name, and which of them were told about
    each partition (so that a change to one partition looks at the sessions concerned, not
    at every session: thousands of nodes)."""

    def __init__(self) -> None:
        self._sessions: dict[str, NodeSession] = {}
        self._told: dict[str, set[str]] = {}   # partition -> nodes whose session assigned it
        self.changed = asyncio.Event()
        self.on_attach: list[Callable[[NodeSession], None]] = []

    def get(self, node: str) -> NodeSession | None:
        s = self._sessions.get(node)
        return s if s is not None and not s.closed else None

    def attach(self, session: NodeSession) -> None:
        old = self._sessions.get(session.node)
        if old is not None and old is not session:
            old.close()
        self._sessions[session.node] = session
        session.index = self._told
        for name in session.assigned:
            self._told.setdefault(name, set()).add(session.node)
        self.changed.set()
        for callback in self.on_attach:
            callback(session)

    def detach(self, session: NodeSession) -> None:
        if self._sessions.get(session.node) is session:
            del self._sessions[session.node]
        session.close()
        self.changed.set()

    def told(self, name: str) -> list[NodeSession]:
        """The open sessions whose agent was told to run `name` (at some epoch)."""
        nodes = self._told.get(name)
        if not nodes:
            return []
        out = []
        for node in list(nodes):
            s = self._sessions.get(node)
            if s is not None and not s.closed and name in s.assigned:
                out.append(s)
            else:   # forgotten, or that session ended: the entry is stale
                nodes.discard(node)
        if not nodes:
            del self._told[name]
        return out

    def __len__(self) -> int:
        """Sessions held (one just closed may count until its stream ends)."""
        return len(self._sessions)

    def nodes(self) -> list[str]:
        return [n for n, s in self._sessions.items() if not s.closed]

    def all(self) -> list[NodeSession]:
        return [s for s in self._sessions.values() if not s.closed]

    def close_all(self) -> None:
        for s in list(self._sessions.values()):
            s.close()
        self._sessions.clear()
        self._told.clear()
