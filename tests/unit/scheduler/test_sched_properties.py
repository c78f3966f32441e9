"""Property tests: no sequence of placements and deletions over-commits a node or breaks a
group, and the sampled fast path never picks an infeasible node."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sched_factories import make_node, make_request

from controller.scheduler import (
    Allocation,
    BatchPlacer,
    NodeInfo,
    PartitionRequest,
    SchedulerConfig,
    Snapshot,
    explain,
    place,
)

MI = 1 << 20
GROUP_MAX = {"g1": 1, "g2": 2}  # one max_per_node per group, so the invariant is well defined

def _named_nodes(kwargs: list[dict[str, Any]]) -> list[NodeInfo]:
    return [make_node(f"n{i}", **kw) for i, kw in enumerate(kwargs)]


nodes_st = st.lists(
    st.fixed_dictionaries(
        {
            "vcpus": st.integers(0, 8),
            "memory": st.integers(0, 64).map(lambda m: m * 256 * MI),
            "arches": st.sampled_from([("x86_64",), ("x86_64", "i386"), ("i386",)]),
            "labels": st.sampled_from([{}, {"zone": "a"}, {"zone": "b"}]),
            "cordoned": st.booleans(),
            "ready": st.booleans(),
            "cpu_ratio": st.sampled_from([1.0, 1.5, 4.0]),
            "memory_ratio": st.sampled_from([1.0, 1.5]),
        }
    ),
    max_size=12,
).map(lambda kws: _named_nodes(kws))


@st.composite
def requests_st(draw: st.DrawFn, name: str) -> PartitionRequest:
    group = draw(st.sampled_from(["", "", "g1", "g2"]))
    return make_request(
        name,
        vcpus=draw(st.integers(1, 4)),
        memory=draw(st.integers(1, 32)) * 256 * MI,
        arch=draw(st.sampled_from(["x86_64", "x86_64", "i386"])),
        selector=draw(st.sampled_from([{}, {}, {"zone": "a"}])),
        group=group,
        max_per_node=GROUP_MAX.get(group, 1),
        strategy=draw(st.sampled_from(["", "binpack", "spread"])),
    )


@dataclass(frozen=True)
class Place:
    requests: tuple[PartitionRequest, ...]


@dataclass(frozen=True)
class Delete:
    index: int


@st.composite
def ops_st(draw: st.DrawFn) -> list[Place | Delete]:
    ops: list[Place | Delete] = []
    counter = 0
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            size = draw(st.integers(1, 6))
            batch = tuple(draw(requests_st(f"p{counter + i}")) for i in range(size))
            counter += size
            ops.append(Place(batch))
        else:
            ops.append(Delete(draw(st.integers(0, 1000))))
    return ops


def _check_invariants(nodes: dict[str, NodeInfo], allocations: list[Allocation]) -> None:
    vcpus: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    groups: Counter[tuple[str, str]] = Counter()
    for a in allocations:
        vcpus[a.node] += a.vcpus
        memory[a.node] += a.memory_bytes
        if a.anti_affinity_group:
            groups[a.node, a.anti_affinity_group] += 1
    for name, node in nodes.items():
        assert vcpus[name] <= node.vcpus * node.cpu_allocation_ratio
        assert memory[name] <= node.memory_bytes * node.memory_allocation_ratio
    for (_, group), count in groups.items():
        assert count <= GROUP_MAX[group]


@settings(max_examples=150, deadline=None)
@given(nodes=nodes_st, ops=ops_st(), sample=st.sampled_from([1, 2, 8, None]))
def test_no_sequence_of_placements_and_deletions_overcommits(
    nodes: list[NodeInfo], ops: list[Place | Delete], sample: int | None
) -> None:
    config = SchedulerConfig(sample=sample)
    table = {n.name: n for n in nodes}
    snapshot = Snapshot(table)
    requests: dict[str, PartitionRequest] = {}
    for op in ops:
        if isinstance(op, Delete):
            allocations = list(snapshot.allocations)
            if allocations:
                del allocations[op.index % len(allocations)]
            snapshot = Snapshot(table, allocations)  # deletions rebuild, as the controller does
        else:
            placer = BatchPlacer(snapshot, config)
            for request in op.requests:
                requests[request.name] = request
                decision = placer.place(request)
                if decision.node is None:
                    # Pending (possibly from the placer's memo) agrees with a fresh look.
                    assert place(request, placer.snapshot(), config).node is None
                else:
                    node = table[decision.node]
                    assert node.ready and not node.cordoned
                    assert request.arch in node.arches
                    assert all(node.labels.get(k) == v for k, v in request.node_selector.items())
            snapshot = placer.snapshot()
        _check_invariants(table, list(snapshot.allocations))
        # The snapshot's precomputed usage agrees with a recount from its allocations.
        recount = Snapshot(table, snapshot.allocations)
        for name in table:
            assert snapshot.usage(name) == recount.usage(name)


@settings(max_examples=150, deadline=None)
@given(
    nodes=nodes_st,
    request=requests_st("probe"),
    sample=st.sampled_from([1, 2, 3, None]),
)
def test_sampled_fast_path_never_picks_an_infeasible_node(
    nodes: list[NodeInfo], request: PartitionRequest, sample: int | None
) -> None:
    config = SchedulerConfig(sample=sample)
    # Pre-load the cluster so capacity and group filters have something to reject.
    snapshot = Snapshot.of(nodes)
    placer = BatchPlacer(snapshot, config)
    for i in range(len(nodes)):
        placer.place(make_request(f"fill{i}", vcpus=2, memory=2048 * MI, group="g1"))
    snapshot = placer.snapshot()
    fast = place(request, snapshot, config)
    full = explain(request, snapshot, config)
    assert full.verdicts is not None
    feasible = {v.node for v in full.verdicts if v.passed}
    if fast.node is None:
        assert not feasible  # the walk scans every node before giving up
        assert fast.reason == full.reason
    else:
        assert fast.node in feasible
        assert fast.node == full.node
