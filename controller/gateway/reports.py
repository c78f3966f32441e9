"""Applying what agents report to the partitions in etcd, fenced by epoch.

A report counts only while the partition is bound to the reporting node at the report's
epoch; a running copy reported under any other epoch (deleted, re-bound, never bound here)
is told to FORGET that epoch. What a valid report changes is the state machine's business
(partitions/machine.py); it is written in one transaction with its events, compared on the
revision it was computed from. The happy path reads the replica's cache; a failed compare,
or anything that would make us stop a copy, re-reads etcd first.

Agents are not trusted with text: the free text of a report or an event (reasons, messages)
is stored in etcd and printed by `viridian get`, `events`, `describe`, so it enters as one
printable line (control characters escaped, safe_text.py) of bounded length.
"""

from __future__ import annotations

import logging

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller import logs
from controller.errors import NotFound
from controller.gateway.sessions import NodeSession
from controller.partitions.actions import PartitionActions
from controller.partitions.machine import CheckpointTaken, Event, Reported
from controller.safe_text import has_controls, one_line
from controller.store import Store

log = logging.getLogger(__name__)
P = pb
ACTIVE = (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED)
MESSAGE_LIMIT = 1024  # characters of a reason or message from an agent
REASON_LIMIT = 64     # an event's CamelCase reason
NAME_LIMIT = 253      # names and digests an agent echoes back


def cleaned(report: apb.PartitionReport) -> apb.PartitionReport:
    """The report with its text as printable lines of bounded length (a copy if changed)."""
    texts = (report.reason, report.checkpoint, report.state.node, report.state.digest)
    if not any(len(t) > NAME_LIMIT or has_controls(t) for t in texts):
        return report
    out = apb.PartitionReport()
    out.CopyFrom(report)
    out.reason = one_line(report.reason, MESSAGE_LIMIT)
    out.checkpoint = one_line(report.checkpoint, NAME_LIMIT)
    if report.HasField("state"):
        out.state.node = one_line(report.state.node, NAME_LIMIT)
        out.state.digest = one_line(report.state.digest, NAME_LIMIT)
    return out


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

    async def record_event(self, node: str, ev: apb.AgentEvent) -> None:
        """Record an event an agent sent, its text cleaned, attributed to the node. A node
        speaks only about itself and its own partitions: an event naming a partition that
        is neither bound to it nor last ran on it is recorded against the node instead."""
        kind, obj = "Node", node
        message = one_line(ev.message, MESSAGE_LIMIT)
        if ev.partition:
            name = one_line(ev.partition, NAME_LIMIT)
            sp = self.store.cache.stored(ev.partition)
            if sp is not None and node in (sp.binding_node, sp.partition.status.node):
                kind, obj = "Partition", name
            else:
                message = one_line(f"about partition {name}: {message}", MESSAGE_LIMIT)
        await self.store.events.record(
            kind, obj, one_line(ev.reason, REASON_LIMIT), message,
            warning=ev.type == "Warning", source=f"node/{node}",
        )

    async def apply(self, node: str, report: apb.PartitionReport, session: NodeSession) -> None:
        report = cleaned(report)
        with logs.log_context(node=node, partition=report.name, epoch=report.epoch):
            await self._apply(node, report, session)

    async def _apply(self, node: str, report: apb.PartitionReport,
                     session: NodeSession) -> None:
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
            session.assign(name, epoch)
        try:
            await self.actions.apply_at(name, node, epoch, event_of(node, report),
                                        from_cache=True)
        except NotFound:
            pass  # deleted meanwhile: dispatch forgets it
        # A report that cannot be applied (Conflict after the retries, etcd unavailable) is
        # never dropped: the StoreError ends the session, and the agent registers again
        # (with another replica, if this one is the trouble) carrying its latest reports.
