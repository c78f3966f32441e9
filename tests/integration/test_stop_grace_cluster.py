"""`viridian stop` on real workers: Turn Off (--force) is prompt, Shut Down (--grace) ends
Off too, and both are recorded as what they were (events)."""

from __future__ import annotations

import time

from itutil import ClusterHandle, assert_cli_error, wait_for, wait_phase
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb


def _get(cluster: ClusterHandle, name: str) -> pb.Partition:
    return cluster.stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=5)


def _messages(cluster: ClusterHandle, name: str) -> list[str]:
    return [e.message for e in cluster.stub.ListEvents(
        cpb.ListEventsRequest(object=name), timeout=5).events]


def _running_sleeper(cluster: ClusterHandle, name: str) -> None:
    res = cluster.cli("create", name, "--image", "sleep", "--", "3600")
    assert res.code == 0, str(res)
    wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING)
    wait_for(lambda: "sleeping 3600" in cluster.cli("logs", name).out, "its first line")


def test_turn_off_is_prompt_and_shut_down_ends_off(cluster: ClusterHandle) -> None:
    name = "it-grace"
    _running_sleeper(cluster, name)
    res = cluster.cli("stop", name, "--force", "--grace", "2")
    assert_cli_error(res, "--force", "--grace")
    assert _get(cluster, name).status.phase == pb.PARTITION_PHASE_RUNNING

    began = time.monotonic()
    res = cluster.cli("stop", name, "--force", "--wait", "--timeout", "20s")
    took = time.monotonic() - began
    assert res.code == 0, str(res)
    part = _get(cluster, name)
    assert part.status.phase == pb.PARTITION_PHASE_OFF, part.status
    assert part.spec.desired_state == pb.DESIRED_STATE_OFF
    assert part.status.stop_grace_seconds == 0
    assert took < 5.0, took  # the CLI's start-up included; the stop itself is at once
    assert "stop requested (Turn Off)" in _messages(cluster, name)

    # Shut Down with a grace: the sleeper is a lone pid 1 without a SIGTERM handler (init
    # ignores it), so nothing can react and it is turned Off at once.
    assert cluster.cli("start", name, "--wait", "--timeout", "20s").code == 0
    wait_for(lambda: "sleeping 3600" in cluster.cli("logs", name).out, "the new run")
    began = time.monotonic()
    res = cluster.cli("stop", name, "--grace", "2", "--wait", "--timeout", "30s")
    took = time.monotonic() - began
    assert res.code == 0, str(res)
    part = _get(cluster, name)
    assert part.status.phase == pb.PARTITION_PHASE_OFF, part.status
    assert part.status.stop_grace_seconds == 0  # it describes a stop under way only
    assert took < 2.0 + 5.0, took  # within the grace and the worker's margin
    assert "stop requested (Shut Down, grace 2s)" in _messages(cluster, name)

    res = cluster.cli("stop", name, "--grace", "-1")
    assert_cli_error(res, "INVALID_ARGUMENT", "grace_seconds")
    assert cluster.cli("delete", name).code == 0
