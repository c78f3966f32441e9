"""`viridian top` on the real cluster: a compute-bound guest shows CPU time used, its node
sums it; measured by the agent from the worker's /proc, relayed by the controller."""

from __future__ import annotations

from pathlib import Path

import pytest
from itutil import GUESTS, ClusterHandle, compile_guest, wait_for, wait_phase
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb


def _row(out: str, name: str) -> list[str] | None:
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == name:
            return cells
    return None


def test_top_shows_a_busy_guest_using_cpu(cluster: ClusterHandle,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    compute = compile_guest(GUESTS / "compute.c", Path(tmp_path_factory.mktemp("top")) / "c")
    cluster.push("compute", compute)
    name = "it-top"
    res = cluster.cli("create", name, "--image", "compute", "--memory", "64Mi", "--",
                      "100000000000")
    assert res.code == 0, str(res)
    try:
        wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING)

        def busy() -> list[str] | None:
            res = cluster.cli("top", "--once")
            assert res.code == 0, str(res)
            row = _row(res.out, name)
            return row if row is not None and row[3] != "-" and float(row[3]) > 0.05 else None

        row = wait_for(busy, "the busy guest's CPU in `top --once`", timeout=30)
        assert row[2] == "Running" and row[1] in ("node-1", "node-2")
        stats = cluster.stub.GetPartitionStats(cpb.GetPartitionStatsRequest(name=name),
                                               timeout=5)
        assert stats.measured and stats.cpu_seconds > 0 and stats.resident_bytes > 1 << 20
        nodes = cluster.cli("top", "nodes", "--once")
        assert nodes.code == 0, str(nodes)
        node_row = _row(nodes.out, row[1])
        assert node_row is not None and float(node_row[1]) > 0, nodes.out
    finally:
        cluster.cli("delete", name, "--force", "--wait", "--timeout", "20s")
