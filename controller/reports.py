"""Applying what agents report to the partitions in etcd, fenced by epoch."""

from __future__ import annotations

import logging

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.errors import Conflict, NotFound
from controller.events import EventRecorder, now_ts
from controller.lifecycle import after_exit, phase_name
from controller.sessions import NodeSession
from controller.store.objects import ObjectStore, StoredPartition

log = logging.getLogger(__name__)
P = pb
FENCED = "fenced"  # reason prefix of partitions an agent stopped when it lost contact
ACTIVE = (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED)


def _forget(session: NodeSession, name: str, epoch: int) -> None:
    session.send(
        apb.ControllerMessage(
            command=apb.PartitionCommand(
                name=name, epoch=epoch, kind=apb.PartitionCommand.KIND_FORGET
            )
        )
    )


class ReportApplier:
    def __init__(self, store: ObjectStore, events: EventRecorder) -> None:
        self.store = store
        self.events = events

    async def apply(self, node: str, report: apb.PartitionReport, session: NodeSession) -> None:
        for _ in range(5):
            try:
                await self._apply_once(node, report, session)
                return
            except Conflict:
                continue
        log.warning("report for %s from %s kept conflicting; dropped", report.name, node)

    async def _checkpoint_taken(self, sp: StoredPartition, report: apb.PartitionReport) -> None:
        p = sp.partition
        for i, cp in enumerate(p.status.checkpoints):
            if cp.name != report.checkpoint or cp.state.digest:
                continue
            if report.reason:  # the agent could not take it: drop the request
                del p.status.checkpoints[i]
                await self.store.update_partition(sp)
                await self.events.record("Partition", p.name, "CheckpointFailed",
                                         f"checkpoint {cp.name}: {report.reason}", warning=True)
                return
            cp.state.CopyFrom(report.state)
            cp.created_at.CopyFrom(report.time if report.HasField("time") else now_ts())
            await self.store.update_partition(sp)
            size = report.state.size_bytes >> 20
            await self.events.record("Partition", p.name, "CheckpointCreated",
                                     f"checkpoint {cp.name} taken ({size}Mi)")
            return

    async def _apply_once(
        self, node: str, report: apb.PartitionReport, session: NodeSession
    ) -> None:
        try:
            sp = await self.store.get_partition(report.name)
        except NotFound:
            if report.phase in ACTIVE:
                _forget(session, report.name, report.epoch)  # deleted while it ran
            return
        if sp.binding_node != node or sp.binding_revision != report.epoch:
            # A stale copy: the partition was re-bound since (or never bound here).
            if report.phase in ACTIVE:
                log.info("stopping stale %s epoch %d on %s", report.name, report.epoch, node)
                _forget(session, report.name, report.epoch)
            return
        p = sp.partition
        st = p.status
        now = now_ts()
        before = st.phase
        if report.phase == P.PARTITION_PHASE_STARTING:
            if st.phase != P.PARTITION_PHASE_SCHEDULED:
                return
            st.phase = P.PARTITION_PHASE_STARTING
            st.reason = f"starting on {node}"
            st.updated_at.CopyFrom(now)
            await self.store.update_partition(sp)
            return
        if report.checkpoint:
            await self._checkpoint_taken(sp, report)
            return
        if report.phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
            if st.phase == report.phase:
                return
            if st.phase in (P.PARTITION_PHASE_STOPPING, P.PARTITION_PHASE_SAVING):
                return  # a stop or save is under way; the agent reports its end
            starting = st.phase in (P.PARTITION_PHASE_SCHEDULED, P.PARTITION_PHASE_STARTING)
            st.phase = report.phase
            st.reason = ""
            restored = starting and st.saved_state.digest
            if starting and report.phase == P.PARTITION_PHASE_RUNNING:
                st.started_at.CopyFrom(report.time if report.HasField("time") else now)
                st.ClearField("saved_state")  # consumed: the guest continues from it
            st.updated_at.CopyFrom(now)
            await self.store.update_partition(sp)
            if starting:
                what = "Restored" if restored else "Started"
                msg = f"{'restored and ' if restored else ''}running on node {node}"
            elif report.phase == P.PARTITION_PHASE_PAUSED:
                what, msg = "Paused", f"every vCPU stopped on node {node}"
            else:
                what, msg = "Resumed", f"running again on node {node}"
            await self.events.record("Partition", p.name, what, msg)
            return
        if report.phase == P.PARTITION_PHASE_SAVED:
            st.phase = P.PARTITION_PHASE_SAVED
            st.saved_state.CopyFrom(report.state)
            st.reason = f"state saved on node {node}"
            st.updated_at.CopyFrom(now)
            p.spec.desired_state = P.DESIRED_STATE_SAVED
            await self.store.release(sp)
            size = report.state.size_bytes >> 20
            await self.events.record("Partition", p.name, "Saved",
                                     f"state written on node {node} ({size}Mi)")
            return
        if report.phase not in (P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_FAILED):
            return
        failed = report.phase == P.PARTITION_PHASE_FAILED
        exit_code = report.exit_code if report.has_exit_code else None
        if before == P.PARTITION_PHASE_STOPPING and p.spec.desired_state == P.DESIRED_STATE_RUNNING:
            # Stopped to be placed elsewhere (drain): cold start on another node.
            st.phase = P.PARTITION_PHASE_PENDING
            st.reason = f"stopped on {node}; placing elsewhere"
            st.updated_at.CopyFrom(now)
            await self.store.release(sp)
            await self.events.record("Partition", p.name, "Rescheduling", st.reason)
            return
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
            st.updated_at.CopyFrom(now)
            await self.store.release(sp)
            await self.events.record("Partition", p.name, "Fenced", st.reason, warning=True)
            return
        stopped = before == P.PARTITION_PHASE_STOPPING
        reason = report.reason or ("stopped" if stopped else "")
        restart = after_exit(p, failed and not stopped, exit_code, reason, now)
        await self.store.release(sp)
        if failed and not stopped:
            what, msg = "Failed", f"on node {node}: {report.reason}"
        elif stopped:
            what, msg = "Stopped", f"stopped on node {node}"
        else:
            what, msg = "Exited", f"guest exited with code {exit_code} on node {node}"
        await self.events.record("Partition", p.name, what, msg, warning=failed)
        if restart:
            await self.events.record(
                "Partition", p.name, "Restarting",
                f"restart policy {P.RestartPolicy.Name(p.spec.restart_policy)}: "
                f"restart #{st.restarts} (was {phase_name(before)})",
            )
