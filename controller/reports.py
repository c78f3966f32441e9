"""Applying what agents report to the partitions in etcd, fenced by epoch.

Each report becomes at most one transaction: the partition's new status, the release of its
binding and allocation when it no longer holds the node, and its events, all guarded by the
revisions they were computed from. The happy path reads from the replica's cache; a failed
compare, or anything that would make us stop a copy, re-reads etcd first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.cache import ClusterCache
from controller.errors import Conflict, NotFound
from controller.events import EventRecorder, now_ts
from controller.lifecycle import after_exit, phase_name
from controller.scheduler.units import format_size
from controller.sessions import NodeSession
from controller.store.etcd import Op
from controller.store.objects import Allocation, ObjectStore, StoredPartition

log = logging.getLogger(__name__)
P = pb
SAVE_FAILED = "save failed"  # reason prefix of an agent's failed save (the guest runs on)
FENCED = "fenced"  # reason prefix of partitions an agent stopped when it lost contact
ACTIVE = (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED)


@dataclass
class Outcome:
    """What one report changes: nothing, the status, or the status plus a release."""

    write: bool = False
    release: bool = False
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # reason, msg, warning

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append((reason, message, warning))


def _forget(session: NodeSession, name: str, epoch: int) -> None:
    session.send(
        apb.ControllerMessage(
            command=apb.PartitionCommand(
                name=name, epoch=epoch, kind=apb.PartitionCommand.KIND_FORGET
            )
        )
    )


class ReportApplier:
    def __init__(self, store: ObjectStore, events: EventRecorder, cache: ClusterCache) -> None:
        self.store = store
        self.events = events
        self.cache = cache

    async def apply(self, node: str, report: apb.PartitionReport, session: NodeSession) -> None:
        for attempt in range(6):
            try:
                await self._apply_once(node, report, session, fresh=attempt > 0)
                return
            except Conflict:
                continue
        log.warning("report for %s from %s kept conflicting; dropped", report.name, node)

    def _cached(self, name: str) -> StoredPartition | None:
        c = self.cache.partitions.get(name)
        if c is None:
            return None
        p = pb.Partition()
        p.CopyFrom(c.partition)
        sp = StoredPartition(p, c.mod_revision)
        binding = self.cache.bindings.get(name)
        if binding is not None:
            sp.binding_node = binding.value.decode()
            sp.binding_revision = binding.mod_revision
            p.status.epoch = binding.mod_revision
        return sp

    async def _apply_once(
        self, node: str, report: apb.PartitionReport, session: NodeSession, fresh: bool
    ) -> None:
        sp = None if fresh else self._cached(report.name)
        if sp is None or sp.binding_node != node or sp.binding_revision != report.epoch:
            try:
                sp = await self.store.get_partition(report.name)  # never act on a stale cache
            except NotFound:
                if report.phase in ACTIVE:
                    _forget(session, report.name, report.epoch)  # deleted while it ran
                return
        if sp.binding_node != node or sp.binding_revision != report.epoch:
            # A stale copy: the partition was re-bound since (or never bound here).
            if report.phase in ACTIVE and not report.checkpoint:
                log.info("stopping stale %s epoch %d on %s", report.name, report.epoch, node)
                _forget(session, report.name, report.epoch)
            return
        outcome = decide(sp.partition, node, report)
        if outcome.write:
            await self._write(sp, outcome)

    async def _write(self, sp: StoredPartition, outcome: Outcome) -> None:
        p = sp.partition
        lease = await self.events.lease_id() if outcome.events else 0
        events: list[Op] = []
        for reason, message, warning in outcome.events:
            key, value = self.events.build("Partition", p.name, reason, message, warning)
            events.append(Op.put(key, value, lease))
        if outcome.release:
            cached = self.cache.allocations.get(sp.binding_node)
            alloc = (Allocation(cached.node, dict(cached.entries), cached.mod_revision)
                     if cached is not None else None)
            await self.store.release(sp, alloc, events)
        else:
            await self.store.update_partition(sp, events)
        for reason, message, _ in outcome.events:
            log.info("event %s Partition/%s: %s", reason, p.name, message)


def decide(p: pb.Partition, node: str, report: apb.PartitionReport) -> Outcome:
    """The status change a report makes (mutates p); pure apart from the clock."""
    st = p.status
    now = now_ts()
    before = st.phase
    out = Outcome()
    if report.checkpoint:
        return _checkpoint_taken(p, report)
    if report.phase == P.PARTITION_PHASE_STARTING:
        if st.phase == P.PARTITION_PHASE_SCHEDULED:
            st.phase = P.PARTITION_PHASE_STARTING
            st.reason = f"starting on {node}"
            st.updated_at.CopyFrom(now)
            out.write = True
        return out
    if report.phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
        if st.phase == report.phase:
            return out
        if st.phase == P.PARTITION_PHASE_SAVING and report.reason.startswith(SAVE_FAILED):
            st.phase = report.phase  # the save failed and the guest runs on
            st.reason = report.reason
            p.spec.desired_state = (P.DESIRED_STATE_PAUSED
                                    if report.phase == P.PARTITION_PHASE_PAUSED
                                    else P.DESIRED_STATE_RUNNING)
            st.updated_at.CopyFrom(now)
            out.write = True
            out.event("SaveFailed", report.reason, warning=True)
            return out
        if st.phase in (P.PARTITION_PHASE_STOPPING, P.PARTITION_PHASE_SAVING):
            return out  # a stop or save is under way; the agent reports its end
        starting = st.phase in (P.PARTITION_PHASE_SCHEDULED, P.PARTITION_PHASE_STARTING)
        restored = starting and bool(st.saved_state.digest)
        st.phase = report.phase
        st.reason = ""
        if starting and report.phase == P.PARTITION_PHASE_RUNNING:
            st.started_at.CopyFrom(report.time if report.HasField("time") else now)
            st.ClearField("saved_state")  # consumed: the guest continues from it
        st.updated_at.CopyFrom(now)
        out.write = True
        if starting:
            out.event("Restored" if restored else "Started",
                      f"{'restored and ' if restored else ''}running on node {node}")
        elif report.phase == P.PARTITION_PHASE_PAUSED:
            out.event("Paused", f"every vCPU stopped on node {node}")
        else:
            out.event("Resumed", f"running again on node {node}")
        return out
    out.write = out.release = True
    st.updated_at.CopyFrom(now)
    if report.phase == P.PARTITION_PHASE_SAVED:
        st.phase = P.PARTITION_PHASE_SAVED
        st.saved_state.CopyFrom(report.state)
        st.reason = f"state saved on node {node}"
        p.spec.desired_state = P.DESIRED_STATE_SAVED
        out.event("Saved", f"state written on node {node} "
                           f"({format_size(report.state.size_bytes)})")
        return out
    if report.phase not in (P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_FAILED):
        return Outcome()
    failed = report.phase == P.PARTITION_PHASE_FAILED
    exit_code = report.exit_code if report.has_exit_code else None
    if before == P.PARTITION_PHASE_STOPPING and p.spec.desired_state == P.DESIRED_STATE_RUNNING:
        # Stopped to be placed elsewhere (drain, checkpoint revert): start again.
        st.phase = P.PARTITION_PHASE_PENDING
        st.reason = f"stopped on {node}; placing it again"
        out.event("Rescheduling", st.reason)
        return out
    if report.reason.startswith(FENCED) and p.spec.desired_state == P.DESIRED_STATE_RUNNING:
        # The node fenced itself (lost contact); it did not fail. Place it again (cold
        # start) if HA, else leave it Lost for the user to start, as for a lost node.
        if p.spec.ha:
            st.phase = P.PARTITION_PHASE_PENDING
            st.restarts += 1
            st.reason = f"{report.reason}; restarting (HA, cold start)"
        else:
            st.phase = P.PARTITION_PHASE_LOST
            st.reason = f"{report.reason}; start it again to run it"
        out.event("Fenced", st.reason, warning=True)
        return out
    stopped = before == P.PARTITION_PHASE_STOPPING
    reason = report.reason or ("stopped" if stopped else "")
    restart = after_exit(p, failed and not stopped, exit_code, reason, now)
    if failed and not stopped:
        out.event("Failed", f"on node {node}: {report.reason}", warning=True)
    elif stopped:
        out.event("Stopped", f"stopped on node {node}")
    else:
        out.event("Exited", f"guest exited with code {exit_code} on node {node}")
    if restart:
        out.event("Restarting", f"restart policy {P.RestartPolicy.Name(p.spec.restart_policy)}: "
                                f"restart #{st.restarts} (was {phase_name(before)})")
    return out


def _checkpoint_taken(p: pb.Partition, report: apb.PartitionReport) -> Outcome:
    out = Outcome()
    for i, cp in enumerate(p.status.checkpoints):
        if cp.name != report.checkpoint or cp.state.digest:
            continue
        out.write = True
        if report.reason:  # the agent could not take it: drop the request
            del p.status.checkpoints[i]
            out.event("CheckpointFailed", f"checkpoint {cp.name}: {report.reason}", True)
            return out
        cp.state.CopyFrom(report.state)
        cp.created_at.CopyFrom(report.time if report.HasField("time") else now_ts())
        out.event("CheckpointCreated",
                  f"checkpoint {cp.name} taken ({format_size(report.state.size_bytes)})")
        return out
    return out
