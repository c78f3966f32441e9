"""Dispatch (every replica): tell the agents whose sessions this replica holds what to run.

Level-triggered from the cache, by partition name: a partition bound to such a node that is
Scheduled gets an Assignment; one whose phase or desired state calls for a command (STOP,
SAVE, PAUSE, RESUME, checkpoints) gets it once per epoch (a STOP again when its grace was
shortened). A copy that an agent was told to
run (or reported running) whose partition was deleted or re-bound (elsewhere, or at a new
epoch) is told to FORGET exactly that epoch. Agents also report
their inventory with every heartbeat (see inventory.py), which catches anything missed here.
"""

from __future__ import annotations

import logging

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.gateway.sessions import NodeSession, SessionRegistry
from controller.loops.base import Loop
from controller.partitions.machine import WANTS_GUEST, wanted_command
from controller.store import ClusterCache, Store

log = logging.getLogger(__name__)
P = pb
KIND = apb.PartitionCommand


def image_for(cache: ClusterCache, spec: pb.PartitionSpec) -> pb.Image:
    """The image a partition runs: the content it was pinned to at create (retagging its
    reference changes nothing), with the entrypoint and configuration of the tag it was
    created from if that still names the content, else of any tag that does, else of the
    content record (its last push). Content deleted by a forced `image rm` leaves only the
    digest: the node's pull then fails with NOT_FOUND and says so."""
    digest = spec.image_digest
    name, _, tag = spec.image.partition("@")[0].partition(":")
    if not digest:  # created before images were pinned: the reference as it is now
        return cache.images.get(f"{name}:{tag or 'latest'}") or pb.Image(name=name)
    exact = cache.images.get(f"{name}:{tag or 'latest'}")
    if exact is not None and exact.digest == digest:
        return exact
    for image in cache.images.values():
        if image.digest == digest and image.name == name:
            return image
    content = cache.contents.get(digest)
    image = pb.Image()
    if content is not None:
        image.CopyFrom(content)
    image.name, image.digest = name, digest
    return image


class DispatchLoop(Loop):
    name = "dispatch"

    def __init__(self, store: Store, sessions: SessionRegistry) -> None:
        super().__init__()
        self.store = store
        self.cache = store.cache
        self.sessions = sessions
        self._names: set[str] = set()
        self._everything = True
        self.cache.subscribe(self._on_change)
        sessions.on_attach.append(self._on_attach)

    def _on_change(self, kind: str, name: str) -> None:
        if kind == "":
            self._everything = True
        elif kind == "partitions":
            self._names.add(name)
        else:
            return
        self.kick()

    def _on_attach(self, session: NodeSession) -> None:
        self._names.update(self.cache.bound_to(session.node))
        self._names.update(session.assigned)
        self.kick()

    async def reconcile(self) -> bool:
        if self._everything:
            self._everything = False
            self._names.clear()
            names = set(self.cache.partitions) | set(self.cache.deleted_partitions)
            for session in self.sessions.all():
                names.update(session.assigned)
        else:
            names, self._names = self._names, set()
        for name in sorted(names):
            self._dispatch(name)
        return False

    def _dispatch(self, name: str) -> None:
        cache = self.cache
        cached = cache.partitions.get(name)
        node = cache.bound_node(name)
        epoch = cache.epoch(name)
        for session in self.sessions.told(name):
            # Deleted, or bound to another node or epoch: that copy must go. (Merely
            # released: its copy ended, which is why it was released; the agent keeps its
            # console for `viridian logs`, and the inventory catches a copy that runs on.)
            told = session.assigned.get(name)
            if told is not None and (cached is None or (
                    node and (session.node != node or told != epoch))):
                session.forget(name, told, purge=cached is None)
        if cached is None:
            self._purge(name)
            return
        holder = self.sessions.get(node) if node else None
        if holder is None:
            return
        self._tell(holder, name, epoch, cached.partition)

    def _tell(self, session: NodeSession, name: str, epoch: int, p: pb.Partition) -> None:
        """The assignment or command partition `name` (bound to session's node) needs."""
        key = (name, epoch)
        if p.status.phase == P.PARTITION_PHASE_SCHEDULED:
            if p.spec.desired_state in WANTS_GUEST and session.assigned.get(name) != epoch:
                session.assign(name, epoch)
                session.send(apb.ControllerMessage(assign=self._assignment(p, epoch)))
                return
        want = wanted_command(p)
        # A STOP carries the grace recorded with it (read from etcd, so a replica that takes
        # over the session sends the same one); a shortened grace goes out again.
        grace = p.status.stop_grace_seconds if want == KIND.KIND_STOP else 0.0
        if want is not None and session.commands.get(key) != (want, grace):
            session.commands[key] = (want, grace)
            session.send(apb.ControllerMessage(command=apb.PartitionCommand(
                name=name, epoch=epoch, kind=want,  # type: ignore[arg-type]
                grace_seconds=grace)))
        if p.status.phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
            for cp in p.status.checkpoints:
                ck = (name, epoch, cp.name)
                if not cp.state.digest and ck not in session.checkpoints:
                    session.checkpoints.add(ck)
                    session.send(apb.ControllerMessage(command=apb.PartitionCommand(
                        name=name, epoch=epoch, kind=KIND.KIND_CHECKPOINT,
                        checkpoint=cp.name)))

    def _purge(self, name: str) -> None:
        """A deleted partition: the nodes holding its saved states drop them."""
        old = self.cache.deleted_partitions.pop(name, None)
        if old is None:
            return
        holders = {old.status.saved_state.node, old.status.node}
        holders.update(cp.state.node for cp in old.status.checkpoints)
        for node in sorted(h for h in holders if h):
            session = self.sessions.get(node)
            if session is not None:
                session.forget(name, 0, purge=True)

    def _assignment(self, p: pb.Partition, epoch: int) -> apb.Assignment:
        a = apb.Assignment(name=p.name, epoch=epoch, spec=p.spec,
                           image=image_for(self.cache, p.spec))
        if p.status.saved_state.digest:
            a.restore.CopyFrom(p.status.saved_state)
        return a
