"""Killing parts of a real cluster: an agent (node lost, HA restart, re-adoption), the controller.

These tests break their cluster, so the module has its own (not the shared one). They run in
file order: the agent test leaves the cluster healthy again for the controller test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from itutil import (
    ClusterHandle,
    phase_name,
    running_cluster,
    wait_for,
    wait_node,
    wait_phase,
    worker_pid,
)
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

# The controller test kills the only controller and starts it again: its partitions keep
# running only if the new process is up and has acknowledged the agents' heartbeats before
# they fence themselves (TTL minus the fence margin after their last acknowledged one). With
# the 2 s of the other clusters that is about 1.5 s for a Python process to start, load its
# cache and take the sessions back, which a loaded 2-core machine did not always give (one
# full-suite run in four: the agents fenced, rightly). 5 s leaves room; a longer outage must
# still fence (tests/unit/agent/test_agent_fence.py).
LEASE_TTL = 5
# Lease TTL plus the node loop's period, the agent's fencing and a margin for 2 busy cores.
NODE_LOSS_S = LEASE_TTL + 8.0


@pytest.fixture(scope="module")
def fcluster(guests: dict[str, Path]) -> Iterator[ClusterHandle]:
    yield from running_cluster("vit-fail-", {"sleep": guests["sleep"], "hello": guests["hello"]},
                               lease_ttl=LEASE_TTL)


def _start_on(cluster: ClusterHandle, name: str, node: str, *flags: str) -> pb.Partition:
    # `start --node` is refused by the server ("not supported yet") and the embedded agents
    # have no labels to select on, so cordon the other node while this one is placed.
    other = "node-2" if node == "node-1" else "node-1"
    assert cluster.cli("node", "cordon", other).code == 0
    try:
        res = cluster.cli("create", name, *flags, "--image", "sleep", "--", "3600")
        assert res.code == 0, str(res)
        part = wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING)
    finally:
        assert cluster.cli("node", "uncordon", other).code == 0
    assert part.status.node == node, part.status
    return part


def test_agent_killed_node_lost_ha_restarts_elsewhere(fcluster: ClusterHandle) -> None:
    stub = fcluster.stub
    plain = _start_on(fcluster, "it-lost", "node-1")
    ha = _start_on(fcluster, "it-ha", "node-1", "--ha")
    assert worker_pid(fcluster.data_dir, "node-1", "it-ha") is not None

    killed_at = time.monotonic()
    fcluster.kill_agent("node-1")
    wait_node(stub, "node-1", pb.NODE_STATE_NOT_READY, timeout=NODE_LOSS_S)
    lost = wait_phase(stub, "it-lost", pb.PARTITION_PHASE_LOST, timeout=NODE_LOSS_S)
    moved = wait_for(lambda: _running_on(fcluster, "it-ha", "node-2"),
                     "it-ha Running on node-2", timeout=NODE_LOSS_S)
    elapsed = time.monotonic() - killed_at
    assert elapsed < NODE_LOSS_S + 5, f"HA failover took {elapsed:.1f}s"
    assert lost.status.node in ("node-1", ""), lost.status
    assert moved.status.epoch > ha.status.epoch, (ha.status, moved.status)
    assert plain.spec.ha is False
    assert worker_pid(fcluster.data_dir, "node-2", "it-ha") is not None

    # The same agent comes back (same name, same run dir): Ready again, and the stale copy of
    # the HA partition on node-1 is stopped (at most one running copy, ever).
    fcluster.restart_agent("node-1")
    wait_node(stub, "node-1", pb.NODE_STATE_READY)
    wait_for(lambda: worker_pid(fcluster.data_dir, "node-1", "it-ha") is None,
             "the stale it-ha worker on node-1 to stop")
    part = stub.GetPartition(cpb.GetPartitionRequest(name="it-ha"), timeout=5)
    assert part.status.node == "node-2" and part.status.phase == pb.PARTITION_PHASE_RUNNING
    # The non-HA one: its worker outlived the agent and is re-adopted (Running again on
    # node-1), or it stays Lost; never anywhere else.
    time.sleep(0.5)  # not a wait for a condition: a window for a wrong move to show
    part = stub.GetPartition(cpb.GetPartitionRequest(name="it-lost"), timeout=5)
    print("it-lost after the agent came back:", phase_name(part.status.phase), part.status.node)
    assert part.status.node == "node-1", part.status
    assert part.status.phase in (pb.PARTITION_PHASE_LOST, pb.PARTITION_PHASE_RUNNING)

    for name in ("it-lost", "it-ha"):
        res = fcluster.cli("delete", "--force", "--wait", "--timeout", "20s", name)
        assert res.code == 0, str(res)


def _running_on(cluster: ClusterHandle, name: str, node: str) -> pb.Partition | None:
    part = cluster.stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=5)
    ok = part.status.phase == pb.PARTITION_PHASE_RUNNING and part.status.node == node
    return part if ok else None


def test_controller_killed_and_replaced(fcluster: ClusterHandle) -> None:
    stub = fcluster.stub
    for node in ("node-1", "node-2"):
        wait_node(stub, node, pb.NODE_STATE_READY)
    running = [f"it-keep-{i}" for i in range(3)]
    for name in running:
        res = fcluster.cli("create", name, "--image", "sleep", "--", "3600")
        assert res.code == 0, str(res)
    for name in running:
        wait_phase(stub, name, pb.PARTITION_PHASE_RUNNING)
    # Acknowledged right before the kill: must survive even if not acted on yet.
    acked = [f"it-acked-{i}" for i in range(5)]
    for name in acked:
        stub.CreatePartition(cpb.CreatePartitionRequest(
            name=name, spec=pb.PartitionSpec(image="hello", args=["0"])), timeout=10)
    before = {p.name: p for p in stub.ListPartitions(cpb.ListPartitionsRequest(),
                                                     timeout=5).partitions}
    pids = {name: worker_pid(fcluster.data_dir, before[name].status.node, name)
            for name in running}

    fcluster.kill_controller()
    fcluster.start_controller()

    after = {p.name: p for p in stub.ListPartitions(cpb.ListPartitionsRequest(),
                                                    timeout=5).partitions}
    assert set(before) <= set(after), set(before) - set(after)
    for node in ("node-1", "node-2"):
        wait_node(stub, node, pb.NODE_STATE_READY)
    for name in acked:
        part = wait_phase(stub, name, pb.PARTITION_PHASE_OFF)
        assert part.status.exit_code == 0
    for name in running:
        part = wait_phase(stub, name, pb.PARTITION_PHASE_RUNNING)
        assert part.status.node == before[name].status.node
        # Same worker: a controller restart does not restart partitions.
        assert worker_pid(fcluster.data_dir, part.status.node, name) == pids[name]

    res = fcluster.cli("run", "it-after", "--image", "hello", "--", "6")
    assert res.code == 6, str(res)
    for name in running:
        fcluster.cli("delete", "--force", name)
