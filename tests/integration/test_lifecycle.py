"""stop / start / delete with --wait, delete refusal, logs and logs -f on real workers."""

from __future__ import annotations

import grpc
import pytest
from itutil import ClusterHandle, assert_cli_error, wait_for, wait_phase
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb


def _get(cluster: ClusterHandle, name: str) -> pb.Partition:
    return cluster.stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=5)


def test_stop_start_delete_sleeping_guest(cluster: ClusterHandle) -> None:
    name = "it-life"
    res = cluster.cli("create", name, "--image", "sleep", "--", "3600")
    assert res.code == 0, str(res)
    wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING)
    wait_for(lambda: "sleeping 3600" in cluster.cli("logs", name).out, "its first line in logs")

    # Deleting a running partition without --force is refused, and it keeps running.
    res = cluster.cli("delete", name)
    assert_cli_error(res, "FAILED_PRECONDITION", name)
    assert _get(cluster, name).status.phase == pb.PARTITION_PHASE_RUNNING

    res = cluster.cli("stop", name, "--wait", "--timeout", "20s")
    assert res.code == 0, str(res)
    part = _get(cluster, name)
    assert part.status.phase == pb.PARTITION_PHASE_OFF, part.status
    assert part.spec.desired_state == pb.DESIRED_STATE_OFF

    res = cluster.cli("start", name, "--wait", "--timeout", "20s")
    assert res.code == 0, str(res)
    assert _get(cluster, name).status.phase == pb.PARTITION_PHASE_RUNNING
    # A fresh run: the console shows the guest's first line again.
    wait_for(lambda: "sleeping 3600" in cluster.cli("logs", name).out, "logs after restart")

    res = cluster.cli("delete", name, "--force", "--wait", "--timeout", "20s")
    assert res.code == 0, str(res)
    with pytest.raises(grpc.RpcError) as info:
        _get(cluster, name)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    res = cluster.cli("get", name)
    assert_cli_error(res, "NOT_FOUND", name)


def test_delete_off_partition_without_force(cluster: ClusterHandle) -> None:
    name = "it-life-off"
    assert cluster.cli("create", name, "--image", "sleep", "--", "0").code == 0
    wait_phase(cluster.stub, name, pb.PARTITION_PHASE_OFF)
    res = cluster.cli("delete", name, "--wait")
    assert res.code == 0, str(res)
    names = [p.name for p in cluster.stub.ListPartitions(
        cpb.ListPartitionsRequest(), timeout=5).partitions]
    assert name not in names


def test_logs_follow_ends_when_guest_ends(cluster: ClusterHandle) -> None:
    name = "it-follow"
    assert cluster.cli("create", name, "--image", "sleep", "--", "2", "4").code == 0
    wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING, pb.PARTITION_PHASE_OFF)
    res = cluster.cli("logs", "-f", name, timeout=30)
    assert res.code == 0, str(res)
    assert res.out.splitlines() == ["sleeping 2", "awake"], str(res)
    part = wait_phase(cluster.stub, name, pb.PARTITION_PHASE_OFF)
    assert part.status.exit_code == 4
    # Without -f, after the end: the same bytes, at once.
    assert cluster.cli("logs", name).out.splitlines() == ["sleeping 2", "awake"]
    assert cluster.cli("delete", name).code == 0


def test_stop_wait_on_already_off_partition(cluster: ClusterHandle) -> None:
    name = "it-life-idem"
    assert cluster.cli("create", name, "--no-start", "--image", "sleep", "--", "1").code == 0
    part = _get(cluster, name)
    assert part.spec.desired_state == pb.DESIRED_STATE_OFF
    assert part.status.phase in (pb.PARTITION_PHASE_PENDING, pb.PARTITION_PHASE_OFF)
    res = cluster.cli("stop", name, "--wait", "--timeout", "10s")
    assert res.code == 0, str(res)
    assert cluster.cli("delete", name).code == 0
