"""Dispatch (every replica): tell the agents whose sessions this replica holds what to run.

Level-triggered from the cache: a partition bound to such a node that should run and has not
been assigned under its current epoch gets an Assignment; one that should stop gets a STOP;
a deleted one gets FORGET. Sessions remember what they were sent, so a pass is idempotent.
"""

from __future__ import annotations

import logging

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.cache import ClusterCache
from controller.errors import NotFound
from controller.lifecycle import HOLDING
from controller.loops.base import Loop
from controller.sessions import SessionRegistry
from controller.store.objects import ObjectStore

log = logging.getLogger(__name__)
P = pb
KIND = apb.PartitionCommand


def wanted_command(p: pb.Partition) -> apb.PartitionCommand.Kind.ValueType | None:
    """The command that moves a bound partition's actual phase towards its desired state."""
    phase, desired = p.status.phase, p.spec.desired_state
    if phase == P.PARTITION_PHASE_STOPPING:
        return KIND.KIND_STOP
    if desired == P.DESIRED_STATE_SAVED and phase in (
        P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED, P.PARTITION_PHASE_SAVING
    ):
        return KIND.KIND_SAVE
    if desired == P.DESIRED_STATE_PAUSED and phase == P.PARTITION_PHASE_RUNNING:
        return KIND.KIND_PAUSE
    if desired == P.DESIRED_STATE_RUNNING and phase == P.PARTITION_PHASE_PAUSED:
        return KIND.KIND_RESUME
    if desired == P.DESIRED_STATE_OFF and phase in HOLDING:
        return KIND.KIND_STOP
    return None


class DispatchLoop(Loop):
    name = "dispatch"

    def __init__(self, cache: ClusterCache, store: ObjectStore, sessions: SessionRegistry) -> None:
        super().__init__()
        self.cache = cache
        self.store = store
        self.sessions = sessions
        cache.subscribe(self._on_change)

    def _on_change(self, kind: str, name: str) -> None:
        if kind in ("", "partitions"):
            self.kick()

    async def reconcile(self) -> bool:
        cache = self.cache
        local = set(self.sessions.nodes())
        if not local:
            cache.deleted_partitions.clear()
            return False
        for name, c in list(cache.partitions.items()):
            node = cache.bound_node(name)
            if node not in local:
                continue
            session = self.sessions.get(node)
            if session is None:
                continue
            p = c.partition
            epoch = cache.epoch(name)
            key = (name, epoch)
            phase = p.status.phase
            if phase == P.PARTITION_PHASE_SCHEDULED:
                if p.spec.desired_state == P.DESIRED_STATE_RUNNING and key not in session.assigned:
                    session.assigned.add(key)
                    session.send(apb.ControllerMessage(assign=await self._assignment(p, epoch)))
                    continue
            want = wanted_command(p)
            if want is not None and session.commands.get(key) != want:
                session.commands[key] = want
                session.send(apb.ControllerMessage(command=apb.PartitionCommand(
                    name=name, epoch=epoch, kind=want)))
            if phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
                for cp in p.status.checkpoints:
                    ck = (name, epoch, cp.name)
                    if not cp.state.digest and ck not in session.checkpoints:
                        session.checkpoints.add(ck)
                        session.send(apb.ControllerMessage(command=apb.PartitionCommand(
                            name=name, epoch=epoch, kind=KIND.KIND_CHECKPOINT,
                            checkpoint=cp.name)))
        for name, old in list(cache.deleted_partitions.items()):
            session = self.sessions.get(old.status.node)
            if session is not None:
                session.send(
                    apb.ControllerMessage(
                        command=apb.PartitionCommand(
                            name=name, epoch=old.status.epoch, kind=KIND.KIND_FORGET,
                            purge=True,
                        )
                    )
                )
            del cache.deleted_partitions[name]
        return False

    async def _assignment(self, p: pb.Partition, epoch: int) -> apb.Assignment:
        image = self.cache.images.get(p.spec.image)
        if image is None:
            try:
                image = await self.store.get_image(p.spec.image)
            except NotFound:
                image = pb.Image(name=p.spec.image)  # the agent reports the failure
        a = apb.Assignment(name=p.name, epoch=epoch, spec=p.spec, image=image)
        if p.status.saved_state.digest:
            a.restore.CopyFrom(p.status.saved_state)
        return a
