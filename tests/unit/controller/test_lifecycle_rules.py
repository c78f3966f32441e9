"""Restart policy and exit handling: a pure function of (partition, how it ended)."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import types_pb2 as pb

from controller.lifecycle import after_exit, needs_placement, phase_name

P = pb


def running(policy: int) -> pb.Partition:
    return pb.Partition(
        name="p",
        spec=pb.PartitionSpec(restart_policy=policy,  # type: ignore[arg-type]
                              desired_state=P.DESIRED_STATE_RUNNING),
        status=pb.PartitionStatus(phase=P.PARTITION_PHASE_RUNNING),
    )


@pytest.mark.parametrize(
    ("policy", "failed", "code", "restart", "phase"),
    [
        (P.RESTART_POLICY_NEVER, False, 0, False, P.PARTITION_PHASE_OFF),
        (P.RESTART_POLICY_NEVER, True, None, False, P.PARTITION_PHASE_FAILED),
        (P.RESTART_POLICY_ON_FAILURE, False, 0, False, P.PARTITION_PHASE_OFF),
        (P.RESTART_POLICY_ON_FAILURE, False, 3, True, P.PARTITION_PHASE_PENDING),
        (P.RESTART_POLICY_ON_FAILURE, True, None, True, P.PARTITION_PHASE_PENDING),
        (P.RESTART_POLICY_ALWAYS, False, 0, True, P.PARTITION_PHASE_PENDING),
    ],
    ids=["never-ok", "never-failed", "onfail-ok", "onfail-nonzero", "onfail-failed",
         "always-ok"],
)
def test_after_exit(policy: int, failed: bool, code: int | None, restart: bool,
                    phase: int) -> None:
    p = running(policy)
    assert after_exit(p, failed, code, "why", Timestamp(seconds=5)) is restart
    assert p.status.phase == phase
    assert p.status.restarts == (1 if restart else 0)
    assert p.status.has_exit_code == (code is not None)
    assert p.status.finished_at.seconds == 5
    # A partition that ended for good is not wanted running any more.
    expected = P.DESIRED_STATE_RUNNING if restart else P.DESIRED_STATE_OFF
    assert p.spec.desired_state == expected
    assert needs_placement(p, bound=False) is restart


def test_stopped_partition_never_restarts() -> None:
    p = running(P.RESTART_POLICY_ALWAYS)
    p.spec.desired_state = P.DESIRED_STATE_OFF
    assert after_exit(p, False, 143, "stopped", Timestamp()) is False
    assert p.status.phase == P.PARTITION_PHASE_OFF


def test_phase_names_are_short() -> None:
    assert phase_name(P.PARTITION_PHASE_RUNNING) == "Running"
    assert phase_name(P.PARTITION_PHASE_LOST) == "Lost"
