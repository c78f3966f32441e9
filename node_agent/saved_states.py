"""Saved states on this node, as the supervisor uses them: where a save writes, naming a
state by its digest, fetching one from another node for a restore (verified as it arrives),
finding a save the previous agent began, and sending ours to the controller for a relay
(under the controller's credit). Knows files and transfers, not partitions' phases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.reports import now
from node_agent.states import CHUNK, StateError, StateReceiver, StateStore

log = logging.getLogger(__name__)
#: Fetch `ref` of partition `name` from another node into the receiver (which resumes at its
#: offset); raises StateError when it cannot be had.
PullState = Callable[[str, pb.StateRef, StateReceiver], Awaitable[None]]
Send = Callable[[apb.AgentMessage], None]


class SavedStates:
    def __init__(self, store: StateStore, node: str, pull: PullState) -> None:
        self.store = store
        self.node = node
        self._pull = pull

    def ref(self, digest: str, size: int) -> pb.StateRef:
        return pb.StateRef(node=self.node, digest=digest, size_bytes=size, saved_at=now())

    async def fetch(self, name: str, ref: pb.StateRef) -> Path:
        """The saved state to restore: here already, or pulled from its node and verified."""
        local = self.store.path(name, ref.digest)
        if local is not None:
            return local
        if ref.node == self.node:
            raise StateError(f"saved state {ref.digest[:19]} is missing from this node")
        receiver = self.store.receiver(name, ref.digest, ref.size_bytes)
        try:
            # Hashed while it arrives: one pass over the data, verified before it is kept.
            await self._pull(name, ref, receiver)
            return receiver.finish()
        finally:
            receiver.abort()

    def save_may_run(self, name: str, pid: int) -> bool:
        """Whether worker `pid` may be in the middle of a save (its state file is being
        written, or written and the worker about to end)."""
        scratch = self.store.scratch(name, "save")
        return scratch.is_file() or scratch.with_name(f".{scratch.name}.{pid}.tmp").exists()

    def adopt_scratch(self, name: str) -> pb.StateRef | None:
        """Name the state file a save left in the scratch file; None if there is none."""
        scratch = self.store.scratch(name, "save")
        if not scratch.is_file():
            return None
        try:
            digest, size, _ = self.store.adopt(name, scratch)
        except (OSError, StateError) as err:
            log.warning("cannot keep the saved state of %s: %s", name, err)
            return None
        return self.ref(digest, size)

    def known_checkpoint(self, name: str, checkpoint: str) -> pb.StateRef | None:
        """The checkpoint's state if it was taken already (a repeated request)."""
        digest = self.store.checkpoints(name).get(checkpoint)
        path = self.store.path(name, digest) if digest else None
        if digest is None or path is None:
            return None
        return self.ref(digest, path.stat().st_size)


@dataclass
class _Sending:
    credit: int
    more: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class StateSender:
    """Our saved states sent to the controller over the session for a relay, one task per
    StateRequest: at most the credit the controller granted ahead (window 0: an older
    controller, no limit), from the requested offset, one chunk read per chunk sent."""

    def __init__(self, store: StateStore, send: Callable[[], Send | None]) -> None:
        self.store = store
        self._send = send
        self._sending: dict[str, _Sending] = {}

    def start(self, req: apb.StateRequest) -> None:
        sending = _Sending(credit=req.window or -1)
        sending.task = asyncio.create_task(self._serve(req, sending),
                                           name=f"state-{req.request_id[:8]}")
        self._sending[req.request_id] = sending
        sending.task.add_done_callback(lambda _t: self._sending.pop(req.request_id, None))

    def credit(self, c: apb.StateCredit) -> None:
        sending = self._sending.get(c.request_id)
        if sending is not None and sending.credit >= 0:
            sending.credit += c.chunks
            sending.more.set()

    def cancel(self, request_id: str) -> None:
        sending = self._sending.get(request_id)
        if sending is not None and sending.task is not None:
            sending.task.cancel()

    def cancel_all(self) -> None:
        """The session ended: its requests with it."""
        for request_id in list(self._sending):
            self.cancel(request_id)

    def _put(self, data: apb.StateData) -> bool:
        """Send on the current session; False when there is none (nobody to send to)."""
        send = self._send()
        if send is not None:
            send(apb.AgentMessage(state=data))
        return send is not None

    async def _serve(self, req: apb.StateRequest, sending: _Sending) -> None:
        rid = req.request_id
        try:
            f, _size = self.store.open(req.name, req.digest, req.offset)
        except (StateError, OSError) as err:
            self._put(apb.StateData(request_id=rid, eof=True, error=str(err)))
            return
        with f:
            while True:
                while sending.credit == 0:
                    sending.more.clear()
                    await sending.more.wait()
                try:
                    chunk = await asyncio.to_thread(f.read, CHUNK)
                except OSError as err:
                    self._put(apb.StateData(request_id=rid, eof=True, error=str(err)))
                    return
                if not chunk:
                    break
                if sending.credit > 0:
                    sending.credit -= 1
                if not self._put(apb.StateData(request_id=rid, data=chunk)):
                    return
                await asyncio.sleep(0)
        self._put(apb.StateData(request_id=rid, eof=True))
