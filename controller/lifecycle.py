"""Pure lifecycle rules: what a partition's status becomes after something happened."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import types_pb2 as pb

P = pb
# Phases in which a partition holds resources on its node.
HOLDING = frozenset(
    {
        P.PARTITION_PHASE_SCHEDULED,
        P.PARTITION_PHASE_STARTING,
        P.PARTITION_PHASE_RUNNING,
        P.PARTITION_PHASE_PAUSED,
        P.PARTITION_PHASE_SAVING,
        P.PARTITION_PHASE_STOPPING,
    }
)
# Phases from which `start` places the partition again.
STARTABLE = frozenset(
    {
        P.PARTITION_PHASE_OFF,
        P.PARTITION_PHASE_FAILED,
        P.PARTITION_PHASE_LOST,
        P.PARTITION_PHASE_SAVED,
    }
)


def phase_name(phase: int) -> str:
    name = P.PartitionPhase.Name(phase)  # type: ignore[arg-type]
    return name.removeprefix("PARTITION_PHASE_").capitalize()


def needs_placement(p: pb.Partition, bound: bool) -> bool:
    return (
        not bound
        and p.spec.desired_state == P.DESIRED_STATE_RUNNING
        and p.status.phase == P.PARTITION_PHASE_PENDING
    )


def should_restart(p: pb.Partition, failed: bool, exit_code: int) -> bool:
    if p.spec.desired_state != P.DESIRED_STATE_RUNNING:
        return False
    policy = p.spec.restart_policy
    if policy == P.RESTART_POLICY_ALWAYS:
        return True
    if policy == P.RESTART_POLICY_ON_FAILURE:
        return failed or exit_code != 0
    return False


def after_exit(
    p: pb.Partition, failed: bool, exit_code: int | None, reason: str, now: Timestamp
) -> bool:
    """Apply a guest's end to p. Returns True when the partition is to be placed again."""
    st = p.status
    st.finished_at.CopyFrom(now)
    st.updated_at.CopyFrom(now)
    st.has_exit_code = exit_code is not None
    st.exit_code = exit_code if exit_code is not None else 0
    st.reason = reason
    if should_restart(p, failed, exit_code or 0):
        st.phase = P.PARTITION_PHASE_PENDING
        st.restarts += 1
        st.reason = f"restarting ({reason or 'exited'})"
        return True
    st.phase = P.PARTITION_PHASE_FAILED if failed else P.PARTITION_PHASE_OFF
    if p.spec.desired_state == P.DESIRED_STATE_RUNNING:
        p.spec.desired_state = P.DESIRED_STATE_OFF  # it ended by itself and stays ended
    return False
