"""Saved states on this node, as the supervisor uses them: where a save writes, naming a
state by its digest, fetching one from another node for a restore (verified as it arrives),
finding a save the previous agent began, and serving ours to the controller. Knows files and
pulls, not partitions' phases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.reports import now
from node_agent.states import StateError, StateStore

log = logging.getLogger(__name__)
PullState = Callable[[str, pb.StateRef], AsyncIterator[bytes]]
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

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in self._pull(name, ref):
                yield chunk

        # Hashed while it arrives: one pass over the data, verified before it is kept.
        return await self.store.receive_async(name, ref.digest, chunks())

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

    async def serve(self, req: apb.StateRequest, send: Send) -> None:
        """Stream a saved state file to the controller (for a restore on another node)."""
        try:
            for chunk in self.store.read(req.name, req.digest):
                send(apb.AgentMessage(state=apb.StateData(request_id=req.request_id,
                                                          data=chunk)))
                await asyncio.sleep(0)
            send(apb.AgentMessage(state=apb.StateData(request_id=req.request_id, eof=True)))
        except (StateError, OSError) as err:
            send(apb.AgentMessage(state=apb.StateData(
                request_id=req.request_id, eof=True, error=str(err))))
