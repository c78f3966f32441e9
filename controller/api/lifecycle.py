"""Public API: Hyper-V's lifecycle — pause, resume, save, move (only while stopped), and
checkpoints. Each call records the request in etcd (through the partition state machine)
and returns; agents carry it out.

There is deliberately no live migration: moving a Running partition is refused with the
save-move-start recipe, as Hyper-V 2008 offered Quick Migration instead.
"""

from __future__ import annotations

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.grpc_errors import Context, map_errors
from controller.partitions.machine import (
    CheckpointApply,
    CheckpointCreate,
    CheckpointDelete,
    Move,
    Pause,
    Resume,
    Save,
)
from controller.store import now_ts
from controller.validation import check_name

P = pb


class LifecycleApi:
    ctx: ApiContext

    @map_errors
    async def PausePartition(self, request: cpb.PartitionRef, context: Context) -> pb.Partition:
        return (await self.ctx.actions.apply(request.name, Pause())).partition

    @map_errors
    async def ResumePartition(self, request: cpb.PartitionRef, context: Context) -> pb.Partition:
        return (await self.ctx.actions.apply(request.name, Resume())).partition

    @map_errors
    async def SavePartition(self, request: cpb.PartitionRef, context: Context) -> pb.Partition:
        return (await self.ctx.actions.apply(request.name, Save())).partition

    @map_errors
    async def MovePartition(
        self, request: cpb.MovePartitionRequest, context: Context
    ) -> pb.Partition:
        node = await self.ctx.store.nodes.get(request.to_node)  # NOT_FOUND first
        await self.ctx.require_content(request.name)
        out = await self.ctx.actions.apply(request.name, Move(node.name))
        p = out.partition
        holder = p.status.saved_state.node if p.status.phase == P.PARTITION_PHASE_SAVED else ""
        if holder and holder != node.name and not self.ctx.store.cache.node_alive(holder):
            await self.ctx.store.events.record(
                "Partition", p.name, "MoveWarning",
                f"its saved state is on node {holder}, which is not Ready now", warning=True)
        return p

    @map_errors
    async def CreateCheckpoint(
        self, request: cpb.CheckpointRequest, context: Context
    ) -> pb.Partition:
        cp_name = request.checkpoint or f"cp-{now_ts().seconds}"
        check_name("checkpoint", cp_name)
        return (await self.ctx.actions.apply(request.name, CheckpointCreate(cp_name))).partition

    @map_errors
    async def ApplyCheckpoint(
        self, request: cpb.CheckpointRequest, context: Context
    ) -> pb.Partition:
        out = await self.ctx.actions.apply(request.name, CheckpointApply(request.checkpoint))
        return out.partition

    @map_errors
    async def DeleteCheckpoint(
        self, request: cpb.CheckpointRequest, context: Context
    ) -> pb.Partition:
        out = await self.ctx.actions.apply(request.name, CheckpointDelete(request.checkpoint))
        p, cp = out.partition, out.removed
        if cp is not None:
            in_use = cp.state.digest and cp.state.digest == p.status.saved_state.digest
            if cp.state.node and not in_use:
                self.ctx.delete_state(p.name, cp.name, cp.state.node)
        return p
