"""Building the reports an agent sends: every one says why the partition is in its phase
(a ReportCause), besides a human-readable reason."""

from __future__ import annotations

from typing import TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

P = pb
Cause: TypeAlias = apb.ReportCause.ValueType
SAVE_FAILED = "save failed"  # the reason of a failed save starts so (the cause says it too)


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def report(name: str, epoch: int, phase: pb.PartitionPhase.ValueType, reason: str = "",
           exit_code: int | None = None, cause: Cause = apb.REPORT_CAUSE_UNSPECIFIED
           ) -> apb.PartitionReport:
    return apb.PartitionReport(
        name=name, epoch=epoch, phase=phase, reason=reason,
        has_exit_code=exit_code is not None, exit_code=exit_code or 0, time=now(),
        cause=cause)


def not_running(name: str, epoch: int) -> apb.PartitionReport:
    """A command for a copy this node does not run (another epoch, or none)."""
    return report(name, epoch, P.PARTITION_PHASE_OFF, "not running on this node",
                  cause=apb.REPORT_CAUSE_NOT_RUNNING)


def checkpoint(base: apb.PartitionReport, name: str, reason: str = "",
               ref: pb.StateRef | None = None) -> apb.PartitionReport:
    """The report of checkpoint `name` (taken: `ref`; not taken: `reason`)."""
    out = apb.PartitionReport()
    out.CopyFrom(base)
    out.checkpoint = name
    out.reason = reason
    out.cause = apb.REPORT_CAUSE_UNSPECIFIED
    if ref is not None:
        out.state.CopyFrom(ref)
    return out


def save_failed(base: apb.PartitionReport, err: Exception) -> apb.PartitionReport:
    """A one-off report that a save failed and the guest runs on (the partition's own
    report keeps its cause, so a later re-announcement is not a save failure)."""
    out = apb.PartitionReport()
    out.CopyFrom(base)
    out.reason = f"{SAVE_FAILED}: {err}"
    out.cause = apb.REPORT_CAUSE_SAVE_FAILED
    out.time.CopyFrom(now())
    return out
