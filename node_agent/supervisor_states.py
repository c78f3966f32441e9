"""Reports and saved states for the supervisor: pause, resume, save and checkpoint a running
partition, collect a save the previous agent began, pull a state from another node for a
restore, and serve ours to the controller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.runtime.spec import ExitStatus
from node_agent.states import StateError, StateStore

if TYPE_CHECKING:
    from node_agent.supervisor import Local

log = logging.getLogger(__name__)
P = pb
K = apb.PartitionCommand
SAVE_FAILED = "save failed"  # reason prefix of a failed save (the cause says so too)
PullState = Callable[[str, pb.StateRef], AsyncIterator[bytes]]
Cause: TypeAlias = apb.ReportCause.ValueType


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

    if TYPE_CHECKING:  # provided by Supervisor
        def _finish(self, lp: Local, status: ExitStatus, announce: bool = True) -> None: ...

        def _forward_events(self, lp: Local) -> None: ...

    # -- reports -------------------------------------------------------------------------

    def _set(self, lp: Local, phase: pb.PartitionPhase.ValueType, reason: str = "",
             exit_code: int | None = None,
             cause: Cause = apb.REPORT_CAUSE_UNSPECIFIED) -> None:
        lp.report = apb.PartitionReport(
            name=lp.name, epoch=lp.epoch, phase=phase, reason=reason,
            has_exit_code=exit_code is not None, exit_code=exit_code or 0, time=_now(),
            cause=cause,
        )

    def _announce(self, lp: Local) -> None:
        self.send(apb.AgentMessage(report=lp.report))

    def _not_running(self, name: str, epoch: int) -> None:
        """A command for a copy this node does not run (another epoch, or none)."""
        self.send(apb.AgentMessage(report=apb.PartitionReport(
            name=name, epoch=epoch, phase=P.PARTITION_PHASE_OFF,
            reason="not running on this node", time=_now(),
            cause=apb.REPORT_CAUSE_NOT_RUNNING)))

    def _state_ref(self, digest: str, size: int) -> pb.StateRef:
        return pb.StateRef(node=self.node, digest=digest, size_bytes=size, saved_at=_now())

    # -- restores ------------------------------------------------------------------------

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

    # -- saves the previous agent began --------------------------------------------------

    def _save_may_run(self, name: str, pid: int) -> bool:
        """Whether worker `pid` may be in the middle of a save (its state file is being
        written, or written and the worker about to end)."""
        scratch = self.states.scratch(name, "save")
        return scratch.is_file() or scratch.with_name(f".{scratch.name}.{pid}.tmp").exists()

    def _adopt_scratch(self, name: str) -> tuple[str, int] | None:
        """Name the state file a save left in the scratch file; None if there is none."""
        scratch = self.states.scratch(name, "save")
        if not scratch.is_file():
            return None
        try:
            digest, size, _ = self.states.adopt(name, scratch)
        except (OSError, StateError) as err:
            log.warning("cannot keep the saved state of %s: %s", name, err)
            return None
        return digest, size

    async def _collect_save(self, lp: Local, announce: bool = True) -> None:
        """The worker ended saved, but no save of ours waited for it (this agent restarted
        during the save): its state sits in the scratch file."""
        lp.saving = True
        try:
            found = await asyncio.to_thread(self._adopt_scratch, lp.name)
        finally:
            lp.saving = False
        if found is None:
            self._set(lp, P.PARTITION_PHASE_FAILED,
                      "the save did not complete: its state file is missing",
                      cause=apb.REPORT_CAUSE_FAILED)
        else:
            self._set(lp, P.PARTITION_PHASE_SAVED, "state saved (collected after an agent "
                      "restart)")
            lp.report.state.CopyFrom(self._state_ref(*found))
        if announce:
            self._forward_events(lp)
            self._announce(lp)

    # -- lifecycle commands --------------------------------------------------------------

    def _checkpoint_report(self, lp: Local, checkpoint: str, reason: str = "",
                           ref: pb.StateRef | None = None) -> apb.AgentMessage:
        report = apb.PartitionReport()
        report.CopyFrom(lp.report)
        report.checkpoint = checkpoint
        report.reason = reason
        report.cause = apb.REPORT_CAUSE_UNSPECIFIED
        if ref is not None:
            report.state.CopyFrom(ref)
        return apb.AgentMessage(report=report)

    def _known_checkpoint(self, lp: Local, checkpoint: str) -> pb.StateRef | None:
        """The checkpoint's state if it was taken already (a repeated request)."""
        digest = self.states.checkpoints(lp.name).get(checkpoint)
        path = self.states.path(lp.name, digest) if digest else None
        if digest is None or path is None:
            return None
        return self._state_ref(digest, path.stat().st_size)

    async def _lifecycle(self, lp: Local, c: apb.PartitionCommand) -> None:
        try:
            await self._lifecycle_op(lp, c)
        finally:
            if (c.kind, c.checkpoint) in lp.pending:
                lp.pending.remove((c.kind, c.checkpoint))
            if c.kind == K.KIND_SAVE:
                lp.saving = False

    async def _lifecycle_op(self, lp: Local, c: apb.PartitionCommand) -> None:
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
                self.send(self._checkpoint_report(lp, c.checkpoint,
                                                  ref=self._state_ref(digest, size)))
                return
        except Exception as err:  # noqa: BLE001 - reported; the partition keeps its phase
            await self._lifecycle_failed(lp, c, err)
            return
        self._announce(lp)

    async def _lifecycle_failed(self, lp: Local, c: apb.PartitionCommand,
                                err: Exception) -> None:
        log.warning("%s of %s failed: %s", K.Kind.Name(c.kind), lp.name, err)
        if c.kind == K.KIND_CHECKPOINT:
            self.send(self._checkpoint_report(
                lp, c.checkpoint, f"could not take the checkpoint: {err}"))
            return
        self.send(apb.AgentMessage(event=apb.AgentEvent(
            partition=lp.name, type="Warning",
            reason=K.Kind.Name(c.kind).removeprefix("KIND_").capitalize() + "Failed",
            message=str(err))))
        status = lp.handle.poll() if lp.handle is not None else None
        if status is not None and lp.running:
            # The worker ended meanwhile (crashed, stopped, fenced, or saved after all).
            if status.saved:
                await self._collect_save(lp)
            else:
                self._finish(lp, status)
            return
        if c.kind == K.KIND_SAVE and lp.running:
            # Still running: say so, so the controller leaves Saving. A one-off report:
            # lp.report keeps its cause, so a later re-announcement is not a save failure.
            report = apb.PartitionReport()
            report.CopyFrom(lp.report)
            report.reason = f"{SAVE_FAILED}: {err}"
            report.cause = apb.REPORT_CAUSE_SAVE_FAILED
            report.time.CopyFrom(_now())
            self.send(apb.AgentMessage(report=report))
            return
        self._announce(lp)

    # -- serving states ------------------------------------------------------------------

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
