"""Public API: Hyper-V's lifecycle — pause, resume, save, move (only while stopped), and
checkpoints. Each call records the request in etcd and returns; agents carry it out.

There is deliberately no live migration: moving a Running partition is refused with the
save-move-start recipe, as Hyper-V 2008 offered Quick Migration instead.
"""

from __future__ import annotations

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
)
from controller.events import now_ts
from controller.grpc_errors import Context, map_errors
from controller.lifecycle import HOLDING, phase_name
from controller.store.objects import StoredPartition
from controller.validation import check_name

P = pb
MAX_CHECKPOINTS = 50


def live_migration_refused(name: str, phase: int, to: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"partition {name!r} is {phase_name(phase)}: live migration is not supported "
        "(a partition moves between nodes only while Off or Saved). To move it with a short "
        f"interruption: viridian save {name} && viridian move {name} --to {to} && "
        f"viridian start {name}"
    )


def find_checkpoint(p: pb.Partition, name: str) -> pb.Checkpoint:
    for cp in p.status.checkpoints:
        if cp.name == name:
            return cp
    raise NotFound(f"partition {p.name!r} has no checkpoint {name!r}")


class LifecycleApi:
    ctx: ApiContext

    async def _event(self, p: pb.Partition, reason: str, message: str) -> None:
        await self.ctx.events.record("Partition", p.name, reason, message)

    @map_errors
    async def PausePartition(self, request: cpb.PartitionRef, context: Context) -> pb.Partition:
        def change(sp: StoredPartition) -> str:
            p = sp.partition
            if p.spec.desired_state == P.DESIRED_STATE_PAUSED:
                return ""
            if p.status.phase != P.PARTITION_PHASE_RUNNING:
                raise FailedPrecondition(
                    f"partition {p.name!r} is {phase_name(p.status.phase)}; "
                    "only a Running partition can be paused"
                )
            p.spec.desired_state = P.DESIRED_STATE_PAUSED
            p.status.updated_at.CopyFrom(now_ts())
            return "update"

        p = await self.ctx.change_partition(request.name, change)
        await self._event(p, "PauseRequested", "pause requested")
        return p

    @map_errors
    async def ResumePartition(self, request: cpb.PartitionRef, context: Context) -> pb.Partition:
        def change(sp: StoredPartition) -> str:
            p = sp.partition
            paused = p.status.phase == P.PARTITION_PHASE_PAUSED
            if p.spec.desired_state == P.DESIRED_STATE_RUNNING and not paused:
                if p.status.phase == P.PARTITION_PHASE_RUNNING:
                    return ""
            if not paused and p.spec.desired_state != P.DESIRED_STATE_PAUSED:
                raise FailedPrecondition(
                    f"partition {p.name!r} is {phase_name(p.status.phase)}; "
                    "only a Paused partition can be resumed"
                )
            p.spec.desired_state = P.DESIRED_STATE_RUNNING
            p.status.updated_at.CopyFrom(now_ts())
            return "update"

        p = await self.ctx.change_partition(request.name, change)
        await self._event(p, "ResumeRequested", "resume requested")
        return p

    @map_errors
    async def SavePartition(self, request: cpb.PartitionRef, context: Context) -> pb.Partition:
        def change(sp: StoredPartition) -> str:
            p = sp.partition
            phase = p.status.phase
            if phase in (P.PARTITION_PHASE_SAVING, P.PARTITION_PHASE_SAVED):
                return ""
            if phase not in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
                raise FailedPrecondition(
                    f"partition {p.name!r} is {phase_name(phase)}; "
                    "only a Running or Paused partition can be saved"
                )
            p.spec.desired_state = P.DESIRED_STATE_SAVED
            p.status.phase = P.PARTITION_PHASE_SAVING
            p.status.reason = "saving its state"
            p.status.updated_at.CopyFrom(now_ts())
            return "update"

        p = await self.ctx.change_partition(request.name, change)
        await self._event(p, "SaveRequested", "save requested")
        return p

    @map_errors
    async def MovePartition(
        self, request: cpb.MovePartitionRequest, context: Context
    ) -> pb.Partition:
        node, _ = await self.ctx.store.get_node(request.to_node)
        holder = ""

        def change(sp: StoredPartition) -> str:
            nonlocal holder
            p = sp.partition
            phase = p.status.phase
            if phase in HOLDING or phase == P.PARTITION_PHASE_PENDING:
                if phase == P.PARTITION_PHASE_PENDING:
                    raise FailedPrecondition(
                        f"partition {p.name!r} is Pending (about to start): stop it first, "
                        "then move it"
                    )
                raise live_migration_refused(p.name, phase, node.name)
            if phase == P.PARTITION_PHASE_SAVED:
                holder = p.status.saved_state.node
            p.spec.node = node.name
            p.status.updated_at.CopyFrom(now_ts())
            return "update"

        p = await self.ctx.change_partition(request.name, change)
        if holder and holder != node.name and not self.ctx.cache.node_alive(holder):
            await self._event(p, "MoveWarning",
                              f"its saved state is on node {holder}, which is not Ready now")
        what = "with its saved state" if holder else "cold"
        await self._event(p, "Moved", f"moved to node {node.name} ({what}); "
                                      "it starts there next")
        return p

    @map_errors
    async def CreateCheckpoint(
        self, request: cpb.CheckpointRequest, context: Context
    ) -> pb.Partition:
        cp_name = request.checkpoint or f"cp-{now_ts().seconds}"
        check_name("checkpoint", cp_name)

        def change(sp: StoredPartition) -> str:
            p = sp.partition
            st = p.status
            if any(cp.name == cp_name for cp in st.checkpoints):
                raise AlreadyExists(f"partition {p.name!r} already has checkpoint {cp_name!r}")
            if len(st.checkpoints) >= MAX_CHECKPOINTS:
                raise ResourceExhausted(
                    f"partition {p.name!r} has {MAX_CHECKPOINTS} checkpoints, the maximum; "
                    "delete one first"
                )
            if st.phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
                # Taken by the agent (brief pause); the state is filled in by its report.
                st.checkpoints.append(pb.Checkpoint(name=cp_name, taken_in=st.phase))
            elif st.phase == P.PARTITION_PHASE_SAVED:
                st.checkpoints.append(pb.Checkpoint(
                    name=cp_name, state=st.saved_state, created_at=now_ts(), taken_in=st.phase))
            elif st.phase in (P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_FAILED,
                              P.PARTITION_PHASE_LOST):
                st.checkpoints.append(pb.Checkpoint(
                    name=cp_name, created_at=now_ts(), taken_in=P.PARTITION_PHASE_OFF))
            else:
                raise FailedPrecondition(
                    f"partition {p.name!r} is {phase_name(st.phase)}; a checkpoint is taken "
                    "while Running, Paused, Saved or Off"
                )
            st.updated_at.CopyFrom(now_ts())
            return "update"

        p = await self.ctx.change_partition(request.name, change)
        await self._event(p, "CheckpointRequested", f"checkpoint {cp_name} requested")
        return p

    @map_errors
    async def ApplyCheckpoint(
        self, request: cpb.CheckpointRequest, context: Context
    ) -> pb.Partition:
        def change(sp: StoredPartition) -> str:
            p = sp.partition
            st = p.status
            cp = find_checkpoint(p, request.checkpoint)
            if cp.taken_in != P.PARTITION_PHASE_OFF and not cp.state.digest:
                raise FailedPrecondition(f"checkpoint {cp.name!r} is still being taken")
            running = st.phase in HOLDING
            if cp.state.digest:
                st.saved_state.CopyFrom(cp.state)
            else:
                st.ClearField("saved_state")
            st.updated_at.CopyFrom(now_ts())
            st.reason = f"reverting to checkpoint {cp.name}"
            if running:
                # Stop this run; the stop report places it again, restoring the checkpoint.
                p.spec.desired_state = P.DESIRED_STATE_RUNNING
                st.phase = P.PARTITION_PHASE_STOPPING
                return "update"
            st.phase = P.PARTITION_PHASE_SAVED if cp.state.digest else P.PARTITION_PHASE_OFF
            p.spec.desired_state = (
                P.DESIRED_STATE_SAVED if cp.state.digest else P.DESIRED_STATE_OFF
            )
            return "release" if sp.binding_node else "update"

        p = await self.ctx.change_partition(request.name, change)
        await self._event(p, "CheckpointApplied", f"reverted to checkpoint {request.checkpoint}")
        return p

    @map_errors
    async def DeleteCheckpoint(
        self, request: cpb.CheckpointRequest, context: Context
    ) -> pb.Partition:
        removed: list[pb.Checkpoint] = []

        def change(sp: StoredPartition) -> str:
            p = sp.partition
            cp = find_checkpoint(p, request.checkpoint)
            removed[:] = [cp]
            kept = [c for c in p.status.checkpoints if c.name != cp.name]
            del p.status.checkpoints[:]
            p.status.checkpoints.extend(kept)
            return "update"

        p = await self.ctx.change_partition(request.name, change)
        cp = removed[0]
        in_use = cp.state.digest and cp.state.digest == p.status.saved_state.digest
        if cp.state.node and not in_use:
            self.ctx.delete_state(p.name, cp.name, cp.state.node)
        await self._event(p, "CheckpointDeleted", f"checkpoint {cp.name} deleted")
        return p
