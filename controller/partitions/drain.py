"""Node drains: recorded in etcd (drains/NODE) by the API, carried out by the leader.

A drain cordons its node, then moves every partition bound there away with Quick Migration:
save on this node, restore on another (the guest continues where it was). What has not
started yet, or whose save failed, is stopped and placed again (a cold start). The drain
follows each partition until it runs elsewhere (or ended, or the user stopped it) and ends
Completed; at its deadline it ends Failed, naming what could not move and why. The stream
of `viridian node drain` only watches the record: a client that goes away (Ctrl-C) ends
nothing, and a new leader resumes a drain where the old one was. Uncordoning the node
cancels its drain.
"""

from __future__ import annotations

import logging

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import types_pb2 as pb

from controller.errors import Conflict, NotFound
from controller.loops.base import Loop
from controller.partitions.actions import PartitionActions
from controller.partitions.machine import DrainMove, DrainStop, phase_name
from controller.store import Store, now_ts

log = logging.getLogger(__name__)
OP = pb.NodeOperation
P = pb
SAVING, STOPPING = "saving", "stopping"


def new_drain(node: str, pending: list[str], deadline_s: int) -> pb.NodeOperation:
    now = now_ts()
    deadline = Timestamp(seconds=now.seconds + deadline_s, nanos=now.nanos)
    return OP(kind=OP.KIND_DRAIN, node=node, state=OP.STATE_RUNNING, started_at=now,
              deadline=deadline, pending=pending,
              message=f"moving {len(pending)} partition(s) away")


def cancelled(op: pb.NodeOperation, why: str) -> pb.NodeOperation:
    out = pb.NodeOperation()
    out.CopyFrom(op)
    out.state = OP.STATE_CANCELLED
    out.finished_at.CopyFrom(now_ts())
    out.message = why
    return out


class DrainLoop(Loop):
    name = "drain"
    resync_s = 0.5

    def __init__(self, store: Store, actions: PartitionActions) -> None:
        super().__init__()
        self.store = store
        self.cache = store.cache
        self.actions = actions
        self.cache.subscribe(self._on_change)

    def _on_change(self, kind: str, name: str) -> None:
        if kind in ("", "drains", "allocations") or (
                kind == "partitions" and self._draining(name)):
            self.kick()

    def _draining(self, partition: str) -> bool:
        return any(op.state == OP.STATE_RUNNING and partition in op.pending
                   for op, _ in self.cache.drains.values())

    async def reconcile(self) -> bool:
        again = False
        for node, (op, rev) in list(self.cache.drains.items()):
            if op.state != OP.STATE_RUNNING:
                continue
            try:
                again |= await self._step(op, rev)
            except Conflict as err:
                log.info("drain of %s: %s", node, err)
                again = True
        return again

    async def _step(self, op: pb.NodeOperation, rev: int) -> bool:
        """One pass over a running drain; True if something was started that needs a look
        soon (the loop also runs on every change of the drain's partitions)."""
        node = op.node
        new = pb.NodeOperation()
        new.CopyFrom(op)
        pending = sorted(set(op.pending) | set(self.cache.bound_to(node)))
        left: list[str] = []
        for name in pending:
            if await self._follow(new, node, name):
                left.append(name)
        del new.pending[:]
        new.pending.extend(left)
        notes: list[tuple[str, str, bool]] = []
        if not left:
            new.state = OP.STATE_COMPLETED
            new.finished_at.CopyFrom(now_ts())
            new.message = (f"node {node} drained: {len(new.done)} partition(s) moved or "
                           "ended" + (f", {len(new.failed)} failed" if new.failed else ""))
            notes.append(("DrainCompleted", new.message, bool(new.failed)))
        elif now_ts().ToNanoseconds() >= op.deadline.ToNanoseconds():
            for name in left:
                c = self.cache.partitions.get(name)
                why = c.partition.status.reason if c is not None else "gone"
                new.failed[name] = why or (phase_name(c.partition.status.phase)
                                           if c is not None else "gone")
            new.state = OP.STATE_FAILED
            new.finished_at.CopyFrom(now_ts())
            new.message = (f"drain deadline passed; {len(left)} partition(s) could not "
                           f"move: {', '.join(left[:10])}")
            notes.append(("DrainFailed", new.message, True))
        else:
            new.message = (f"waiting for {len(left)} partition(s) to leave: "
                           f"{', '.join(left[:10])}")
        if new != op:
            await self.store.nodes.put_operation(new, rev, fenced=True, notes=notes)
        return False

    async def _follow(self, op: pb.NodeOperation, node: str, name: str) -> bool:
        """Move partition `name` along; False once the drain is done with it."""
        sp = self.cache.stored(name)
        if sp is None:
            op.done[name] = "deleted"
            op.steps.pop(name, None)
            return False
        p, phase = sp.partition, sp.partition.status.phase
        if sp.binding_node == node:
            step = op.steps.get(name, "")
            try:
                if phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
                    if step == SAVING:  # running here again: its save failed
                        await self.actions.apply_at(name, node, sp.binding_revision,
                                                    DrainStop(node), fenced=True)
                        op.steps[name] = STOPPING
                    elif step != STOPPING:
                        await self.actions.apply_at(name, node, sp.binding_revision,
                                                    DrainMove(node), fenced=True)
                        op.steps[name] = SAVING
                elif phase in (P.PARTITION_PHASE_SCHEDULED, P.PARTITION_PHASE_STARTING):
                    await self.actions.apply_at(name, node, sp.binding_revision,
                                                DrainStop(node), fenced=True)
                    op.steps[name] = STOPPING
            except NotFound:
                op.done[name] = "deleted"
                return False
            return True
        if sp.binding_node:  # bound elsewhere
            if phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
                how = ("restored" if op.steps.get(name) == SAVING else "restarted")
                op.done[name] = f"{how} on node {sp.binding_node}"
                op.steps.pop(name, None)
                return False
            return True  # on its way up there
        if phase == P.PARTITION_PHASE_PENDING and p.spec.desired_state in (
                P.DESIRED_STATE_RUNNING, P.DESIRED_STATE_PAUSED):
            return True  # waiting for a node (the deadline decides)
        if phase == P.PARTITION_PHASE_FAILED:
            op.failed[name] = p.status.reason or "failed"
        else:
            op.done[name] = phase_name(phase) + (f" ({p.status.reason})"
                                                 if p.status.reason else "")
        op.steps.pop(name, None)
        return False
