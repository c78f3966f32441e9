"""The controller's commands for the supervisor: stop, forget, and the lifecycle commands.

Every command may arrive twice: after a session moves to another controller replica, that
replica sends the current wanted command again. So a command that is under way already is
ignored (its end is reported), one that is done already re-announces the result, and a
command for a copy this node does not run says so (OFF, cause NOT_RUNNING).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

if TYPE_CHECKING:
    from node_agent.runtime.spec import ExitStatus
    from node_agent.states import StateStore
    from node_agent.supervisor import Local

P = pb
K = apb.PartitionCommand
LIFECYCLE = frozenset({K.KIND_PAUSE, K.KIND_RESUME, K.KIND_SAVE, K.KIND_CHECKPOINT})
STOP_GRACE_S = 3.0


class CommandOps:
    """Mixed into Supervisor."""

    local: dict[str, Local]
    states: StateStore
    send: Callable[[apb.AgentMessage], None]

    if TYPE_CHECKING:  # provided by Supervisor and StateOps
        def _announce(self, lp: Local) -> None: ...

        def _not_running(self, name: str, epoch: int) -> None: ...

        def _set(self, lp: Local, phase: pb.PartitionPhase.ValueType, reason: str = "",
                 exit_code: int | None = None,
                 cause: apb.ReportCause.ValueType = apb.REPORT_CAUSE_UNSPECIFIED) -> None: ...

        def _finish(self, lp: Local, status: ExitStatus, announce: bool = True) -> None: ...

        async def _retire(self, old: Local) -> None: ...

        async def _cleanup(self, name: str, purge: bool) -> None: ...

        async def _cleanup_locked(self, name: str, purge: bool) -> None: ...

        def _name_lock(self, name: str) -> asyncio.Lock: ...

        async def _lifecycle(self, lp: Local, c: apb.PartitionCommand) -> None: ...

        def _known_checkpoint(self, lp: Local, checkpoint: str) -> pb.StateRef | None: ...

        def _checkpoint_report(self, lp: Local, checkpoint: str, reason: str = "",
                               ref: pb.StateRef | None = None) -> apb.AgentMessage: ...

    def command(self, c: apb.PartitionCommand) -> None:
        if c.kind == K.KIND_DELETE_CHECKPOINT:
            self.states.drop_checkpoint(c.name, c.checkpoint)
            return
        if c.kind == K.KIND_FORGET:
            self._forget_command(c)
            return
        lp = self.local.get(c.name)
        any_epoch = c.kind == K.KIND_STOP and not c.epoch
        if lp is None or (lp.epoch != c.epoch and not any_epoch):
            self._not_running(c.name, c.epoch)
            return
        if not lp.running:
            # It ended: say how (a saved one re-announces SAVED with its state).
            self._announce(lp)
            return
        if c.kind == K.KIND_STOP:
            self._stop(lp)
        elif c.kind in LIFECYCLE:
            self._lifecycle_command(lp, c)

    def _stop(self, lp: Local) -> None:
        if lp.stopping:
            return  # a stop is under way; its end is reported
        lp.stopping = True
        if lp.handle is not None:  # a launch under way stops it itself
            asyncio.create_task(asyncio.to_thread(lp.handle.stop, STOP_GRACE_S))

    def _lifecycle_command(self, lp: Local, c: apb.PartitionCommand) -> None:
        op = (c.kind, c.checkpoint)
        if lp.stopping or lp.saving:
            if c.kind == K.KIND_CHECKPOINT:
                what = "stopped" if lp.stopping else "saved"
                self.send(self._checkpoint_report(
                    lp, c.checkpoint, f"could not take the checkpoint: it is being {what}"))
            return  # the worker is going away; its end is reported
        if c.kind == K.KIND_SAVE and time.monotonic() < lp.adopted_save_until:
            return  # the previous agent's save may still run: its end is reported
        if (lp.pending and lp.pending[-1] == op) or (
                c.kind in (K.KIND_SAVE, K.KIND_CHECKPOINT) and op in lp.pending):
            return  # the same request is under way
        if not lp.pending and (
                (c.kind == K.KIND_PAUSE and lp.report.phase == P.PARTITION_PHASE_PAUSED) or
                (c.kind == K.KIND_RESUME and lp.report.phase == P.PARTITION_PHASE_RUNNING)):
            self._announce(lp)  # already there
            return
        if c.kind == K.KIND_CHECKPOINT:
            ref = self._known_checkpoint(lp, c.checkpoint)
            if ref is not None:
                self.send(self._checkpoint_report(lp, c.checkpoint, ref=ref))
                return
        if lp.handle is None:
            self._announce(lp)  # still starting: the controller asks again later
            return
        lp.pending.append(op)
        if c.kind == K.KIND_SAVE:
            lp.saving = True
        asyncio.create_task(self._lifecycle(lp, c))

    def _forget_command(self, c: apb.PartitionCommand) -> None:
        """Stop the copy at c.epoch (or an older one) and delete what the node keeps for it;
        a newer copy is not the one meant. Epoch 0: only a copy that does not run."""
        lp = self.local.get(c.name)
        if lp is None:
            asyncio.create_task(self._cleanup(c.name, c.purge))
            return
        if c.epoch and lp.epoch > c.epoch:
            return
        if not c.epoch and (lp.running or lp.saving):
            return
        del self.local[c.name]
        asyncio.create_task(self._forget(lp, c.purge))

    async def _forget(self, lp: Local, purge: bool) -> None:
        async with self._name_lock(lp.name):
            await self._forget_locked(lp, purge)

    async def _forget_locked(self, lp: Local, purge: bool) -> None:
        was_running = lp.running or lp.saving
        lp.forgotten = True
        await self._retire(lp)
        if was_running:
            status = lp.handle.poll() if lp.handle is not None else None
            if status is not None:
                self._finish(lp, status, announce=False)
            else:
                self._set(lp, P.PARTITION_PHASE_OFF, "stopped before it started",
                          cause=apb.REPORT_CAUSE_STOPPED)
            self._announce(lp)
        await self._cleanup_locked(lp.name, purge)
