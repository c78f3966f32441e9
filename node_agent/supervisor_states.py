"""Saved states for the supervisor: pause, resume, save and checkpoint a running partition,
pull a state from another node for a restore, and serve ours to the controller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.states import StateError, StateStore

if TYPE_CHECKING:
    from node_agent.supervisor import Local

log = logging.getLogger(__name__)
P = pb
K = apb.PartitionCommand
SAVE_FAILED = "save failed"  # reason prefix the controller recognises
PullState = Callable[[str, pb.StateRef], AsyncIterator[bytes]]


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class StateOps:
    """Mixed into Supervisor: reports, and the saved-state operations built on them."""

    node: str
    states: StateStore
    _pull_state: PullState
    send: Callable[[apb.AgentMessage], None]

    def _set(self, lp: Local, phase: pb.PartitionPhase.ValueType, reason: str = "",
             exit_code: int | None = None) -> None:
        lp.report = apb.PartitionReport(
            name=lp.name, epoch=lp.epoch, phase=phase, reason=reason,
            has_exit_code=exit_code is not None, exit_code=exit_code or 0, time=_now(),
        )

    def _announce(self, lp: Local) -> None:
        self.send(apb.AgentMessage(report=lp.report))

    async def _fetch_state(self, name: str, ref: pb.StateRef) -> Path:
        """The saved state to restore: here already, or pulled from its node and verified."""
        local = self.states.path(name, ref.digest)
        if local is not None:
            return local
        if ref.node == self.node:
            raise StateError(f"saved state {ref.digest[:19]} is missing from this node")
        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in self._pull_state(name, ref):
                yield chunk

        # Hashed while it arrives: one pass over the data, verified before it is kept.
        return await self.states.receive_async(name, ref.digest, chunks())

    def _state_ref(self, digest: str, size: int) -> pb.StateRef:
        return pb.StateRef(node=self.node, digest=digest, size_bytes=size, saved_at=_now())

    async def _lifecycle(self, lp: Local, c: apb.PartitionCommand) -> None:
        handle = lp.handle
        if handle is None:
            return
        try:
            if c.kind == K.KIND_PAUSE:
                await asyncio.to_thread(handle.pause)
                self._set(lp, P.PARTITION_PHASE_PAUSED)
            elif c.kind == K.KIND_RESUME:
                await asyncio.to_thread(handle.resume)
                self._set(lp, P.PARTITION_PHASE_RUNNING)
            elif c.kind == K.KIND_SAVE:
                lp.saving = True
                tmp = self.states.scratch(lp.name, "save")
                await asyncio.to_thread(handle.save, tmp)
                digest, size, _ = await asyncio.to_thread(self.states.adopt, lp.name, tmp)
                self._set(lp, P.PARTITION_PHASE_SAVED, "state saved")
                lp.report.state.CopyFrom(self._state_ref(digest, size))
            elif c.kind == K.KIND_CHECKPOINT:
                tmp = self.states.scratch(lp.name, f"cp-{c.checkpoint}")
                await asyncio.to_thread(handle.checkpoint, tmp)
                digest, size, _ = await asyncio.to_thread(self.states.adopt, lp.name, tmp)
                self.states.remember(lp.name, c.checkpoint, digest)
                report = apb.PartitionReport()
                report.CopyFrom(lp.report)
                report.checkpoint = c.checkpoint
                report.state.CopyFrom(self._state_ref(digest, size))
                self.send(apb.AgentMessage(report=report))
                return
        except Exception as err:  # noqa: BLE001 - reported; the partition keeps its phase
            log.warning("%s of %s failed: %s", K.Kind.Name(c.kind), lp.name, err)
            lp.saving = False
            if c.kind == K.KIND_CHECKPOINT:
                report = apb.PartitionReport()
                report.CopyFrom(lp.report)
                report.checkpoint = c.checkpoint
                report.reason = f"could not take the checkpoint: {err}"
                self.send(apb.AgentMessage(report=report))
                return
            self.send(apb.AgentMessage(event=apb.AgentEvent(
                partition=lp.name, type="Warning",
                reason=K.Kind.Name(c.kind).removeprefix("KIND_").capitalize() + "Failed",
                message=str(err))))
            if c.kind == K.KIND_SAVE and lp.running:
                # Still running: say so, so the controller leaves Saving.
                self._set(lp, lp.report.phase, f"{SAVE_FAILED}: {err}")
        self._announce(lp)

    async def send_state(self, req: apb.StateRequest) -> None:
        """Stream a saved state file to the controller (for a restore on another node)."""
        try:
            for chunk in self.states.read(req.name, req.digest):
                self.send(apb.AgentMessage(state=apb.StateData(
                    request_id=req.request_id, data=chunk)))
                await asyncio.sleep(0)
            self.send(apb.AgentMessage(state=apb.StateData(request_id=req.request_id,
                                                           eof=True)))
        except (StateError, OSError) as err:
            self.send(apb.AgentMessage(state=apb.StateData(
                request_id=req.request_id, eof=True, error=str(err))))

