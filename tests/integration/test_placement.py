"""Placement on a real 2-node cluster: spread, cordon/uncordon, explain; CLI output formats."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from itutil import ClusterHandle, wait_phase
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def _keys(data: Any) -> Iterator[str]:
    """Every field name in nested API data (map fields such as labels/env are skipped)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield key
            if key not in ("labels", "env", "node_selector"):
                yield from _keys(value)
    elif isinstance(data, list):
        for item in data:
            yield from _keys(item)


def _delete_all(cluster: ClusterHandle, names: list[str]) -> None:
    for name in names:
        cluster.cli("delete", "--force", "--wait", "--timeout", "20s", name)


@pytest.fixture
def cleanup(cluster: ClusterHandle) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    _delete_all(cluster, names)


def test_spread_uses_both_nodes_and_outputs_parse(cluster: ClusterHandle,
                                                  cleanup: list[str]) -> None:
    names = [f"it-spread-{i}" for i in range(6)]
    cleanup.extend(names)
    for name in names:
        res = cluster.cli("create", name, "--image", "sleep", "--strategy", "spread",
                          "--label", "suite=spread", "--", "3600")
        assert res.code == 0, str(res)
    for name in names:
        wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING)

    listed = cluster.stub.ListPartitions(
        cpb.ListPartitionsRequest(label_selector={"suite": "spread"}), timeout=5).partitions
    assert sorted(p.name for p in listed) == names
    per_node = Counter(p.status.node for p in listed)
    assert set(per_node) == {"node-1", "node-2"}, per_node
    assert max(per_node.values()) - min(per_node.values()) <= 2, per_node

    # ls -o json / -o yaml: the API objects, snake_case fields, enum names.
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        res = cluster.cli("ls", "-l", "suite=spread", "-o", fmt)
        assert res.code == 0, str(res)
        data = load(res.out)
        assert [d["name"] for d in data] == names
        assert all(SNAKE.match(k) for k in _keys(data)), sorted(set(_keys(data)))
        for item in data:
            assert item["status"]["phase"] == "PARTITION_PHASE_RUNNING"
            assert item["spec"]["desired_state"] == "DESIRED_STATE_RUNNING"
            assert item["spec"]["placement_strategy"] == "spread"
            assert item["status"]["arch"] == "ARCH_X86_64"
            assert int(item["spec"]["memory_bytes"]) == 64 << 20
        assert Counter(d["status"]["node"] for d in data) == per_node

    nodes = json.loads(cluster.cli("nodes", "-o", "json").out)
    assert [n["name"] for n in nodes] == ["node-1", "node-2"]
    assert all(SNAKE.match(k) for k in _keys(nodes))
    for node in nodes:
        assert node["status"]["state"] == "NODE_STATE_READY"
        assert node["status"]["partitions"] >= per_node[node["name"]]
        assert node["status"]["allocated_vcpus"] >= per_node[node["name"]]
    table = cluster.cli("ls", "-l", "suite=spread")
    assert table.code == 0 and table.out.splitlines()[0].split()[:3] == ["NAME", "PHASE", "NODE"]
    assert sum("Running" in line for line in table.out.splitlines()) == 6, table.out
    by_node = cluster.stub.ListPartitions(
        cpb.ListPartitionsRequest(node="node-2", label_selector={"suite": "spread"}),
        timeout=5).partitions
    assert len(by_node) == per_node["node-2"]


def test_cordon_uncordon_and_explain(cluster: ClusterHandle, cleanup: list[str]) -> None:
    res = cluster.cli("node", "cordon", "node-1")
    assert res.code == 0, str(res)
    try:
        node = cluster.stub.GetNode(cpb.GetNodeRequest(name="node-1"), timeout=5)
        assert node.spec.cordoned
        names = [f"it-cordon-{i}" for i in range(3)]
        cleanup.extend(names)
        for name in names:
            # spread would prefer the emptier node, so the cordon is what keeps it off node-1.
            res = cluster.cli("create", name, "--image", "sleep", "--strategy", "spread",
                              "--", "3600")
            assert res.code == 0, str(res)
        for name in names:
            part = wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING)
            assert part.status.node == "node-2", part.status

        res = cluster.cli("explain", names[0], "-o", "json")
        assert res.code == 0, str(res)
        explained = json.loads(res.out)
        assert explained["partition"] == names[0]
        verdicts = {v["node"]: v for v in explained["verdicts"]}
        assert set(verdicts) == {"node-1", "node-2"}
        filters_1 = {f["name"]: f for f in verdicts["node-1"]["filters"]}
        assert filters_1["cordoned"]["passed"] is False
        assert filters_1["cordoned"]["reason_code"] == "Cordoned"
        assert not verdicts["node-1"].get("passed", False)
        assert all(f["passed"] for f in verdicts["node-2"]["filters"])
        assert {f["name"] for f in verdicts["node-2"]["filters"]} >= {"cordoned", "memory"}

        dry = cluster.cli("explain", "--dry-run", "--image", "sleep", "-o", "json")
        assert dry.code == 0, str(dry)
        assert json.loads(dry.out)["chosen_node"] == "node-2"
        table = cluster.cli("explain", "--dry-run", "--image", "sleep", "--memory", "60Gi")
        assert table.code == 0, str(table)
        assert "node-1" in table.out and "node-2" in table.out
        too_big = json.loads(cluster.cli("explain", "--dry-run", "--image", "sleep",
                                         "--memory", "60Gi", "-o", "json").out)
        assert too_big["chosen_node"] == ""
        assert "memory" in too_big["summary"], too_big["summary"]
    finally:
        res = cluster.cli("node", "uncordon", "node-1")
    assert res.code == 0, str(res)
    assert not cluster.stub.GetNode(cpb.GetNodeRequest(name="node-1"), timeout=5).spec.cordoned

    # node-1 is now emptier: spread puts the next one there.
    cleanup.append("it-cordon-after")
    res = cluster.cli("create", "it-cordon-after", "--image", "sleep", "--strategy", "spread",
                      "--", "3600")
    assert res.code == 0, str(res)
    part = wait_phase(cluster.stub, "it-cordon-after", pb.PARTITION_PHASE_RUNNING)
    assert part.status.node == "node-1", part.status
    explained = json.loads(cluster.cli("explain", "--dry-run", "--image", "sleep",
                                       "-o", "json").out)
    assert all(v["passed"] for v in explained["verdicts"]), explained


def test_unknown_output_format_lists_formats(cluster: ClusterHandle) -> None:
    res = cluster.cli("ls", "-o", "xml")
    assert res.code != 0
    assert "json" in res.err and "yaml" in res.err and "Traceback" not in res.err
