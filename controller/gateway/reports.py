"""Applying what agents report to the partitions in etcd, fenced by epoch.

A report counts only while the partition is bound to the reporting node at the report's
epoch; a running copy reported under any other epoch (deleted, re-bound, never bound here)
is told to FORGET that epoch. What a valid report changes is the state machine's business
(partitions/machine.py); it is written in one transaction with its events, compared on the
revision it was computed from. The happy path reads the replica's cache; a failed compare,
or anything that would make us stop a copy, re-reads etcd first.
"""

from __future__ import annotations

import logging

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.errors import NotFound
from controller.gateway.sessions import NodeSession
from controller.partitions.actions import PartitionActions
from controller.partitions.machine import CheckpointTaken, Event, Reported
from controller.store import Store

log = logging.getLogger(__name__)
P = pb
ACTIVE = (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED)


def event_of(node: str, report: apb.PartitionReport) -> Event:
    if report.checkpoint:
        return CheckpointTaken(report.checkpoint,
                               report.state if report.state.digest else None,
                               error=report.reason,
                               time=report.time if report.HasField("time") else None)
    return Reported(node, report.phase, report.cause,
                    report.exit_code if report.has_exit_code else None, report.reason,
                    report.state if report.state.digest else None,
                    report.time if report.HasField("time") else None)


class ReportApplier:
    def __init__(self, store: Store, actions: PartitionActions) -> None:
        self.store = store
        self.actions = actions

    async def apply(self, node: str, report: apb.PartitionReport, session: NodeSession) -> None:
        name, epoch = report.name, report.epoch
        sp = self.store.cache.stored(name)
        if sp is None or sp.binding_node != node or sp.binding_revision != epoch:
            try:
                sp = await self.store.partitions.get(name)  # never act on a stale cache
            except NotFound:
                if report.phase in ACTIVE:
                    session.forget(name, epoch, purge=True)  # deleted while it ran
                return
        if sp.binding_node != node or sp.binding_revision != epoch:
            # A stale copy: the partition was re-bound since (or never bound here).
            if report.phase in ACTIVE and not report.checkpoint:
                log.info("stopping stale %s epoch %d on %s", name, epoch, node)
                session.forget(name, epoch)
            return
        if report.phase in ACTIVE:
            session.assigned[name] = epoch
        try:
            await self.actions.apply_at(name, node, epoch, event_of(node, report),
                                        from_cache=True)
        except NotFound:
            pass  # deleted meanwhile: dispatch forgets it
        # A report that cannot be applied (Conflict after the retries, etcd unavailable) is
        # never dropped: the StoreError ends the session, and the agent registers again
        # (with another replica, if this one is the trouble) carrying its latest reports.
