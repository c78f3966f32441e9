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
            want_run = p.spec.desired_state == P.DESIRED_STATE_RUNNING
            if want_run and phase == P.PARTITION_PHASE_SCHEDULED and key not in session.assigned:
                try:
                    image = await self.store.get_image(p.spec.image)
                except NotFound:
                    image = pb.Image(name=p.spec.image)  # the agent reports the failure
                spec = pb.PartitionSpec()
                spec.CopyFrom(p.spec)
                session.assigned.add(key)
                session.send(
                    apb.ControllerMessage(
                        assign=apb.Assignment(name=name, epoch=epoch, spec=spec, image=image)
                    )
                )
            elif phase in HOLDING and (not want_run or phase == P.PARTITION_PHASE_STOPPING):
                if key not in session.stopping:
                    session.stopping.add(key)
                    session.send(
                        apb.ControllerMessage(
                            command=apb.PartitionCommand(
                                name=name, epoch=epoch, kind=KIND.KIND_STOP
                            )
                        )
                    )
        for name, old in list(cache.deleted_partitions.items()):
            session = self.sessions.get(old.status.node)
            if session is not None:
                session.send(
                    apb.ControllerMessage(
                        command=apb.PartitionCommand(
                            name=name, epoch=old.status.epoch, kind=KIND.KIND_FORGET
                        )
                    )
                )
            del cache.deleted_partitions[name]
        return False
