"""place / explain / place_batch: choice, pending reasons, sampling, determinism, consume."""

from __future__ import annotations

import pytest
from sched_factories import make_alloc, make_cluster, make_node, make_request, make_snapshot

from controller.scheduler import (
    FILTERS,
    SchedulerConfig,
    Snapshot,
    explain,
    place,
    place_batch,
)
from controller.scheduler.filters import CORDONED, INSUFFICIENT_MEMORY


def _four_nodes() -> Snapshot:
    nodes = [make_node(f"n{i}", vcpus=4, memory="16Gi") for i in range(3)]
    nodes.append(make_node("n3", cordoned=True))
    allocs = [make_alloc(f"a{i}", f"n{i}", 1, "10Gi") for i in range(3)]
    return make_snapshot(nodes, allocs)


def test_pending_reason_groups_by_first_failing_filter() -> None:
    request = make_request(memory="8Gi")
    expected = "0/4 nodes available: 3 not enough memory (need 8Gi, largest free 6Gi); 1 cordoned"
    decision = place(request, _four_nodes())
    assert decision.node is None and not decision.placed
    assert decision.reason == expected
    assert explain(request, _four_nodes()).reason == expected


def test_pending_reason_without_nodes() -> None:
    decision = place(make_request(), Snapshot({}))
    assert decision.node is None
    assert decision.reason.startswith("0/0 nodes available")


def test_explain_covers_every_node_with_every_filter() -> None:
    snap = _four_nodes()
    decision = explain(make_request(memory="8Gi"), snap)
    assert decision.verdicts is not None
    assert sorted(v.node for v in decision.verdicts) == sorted(snap.nodes)
    for verdict in decision.verdicts:
        # No short-circuit: every filter has a result, even after the first failure.
        assert [f.name for f in verdict.filters] == list(FILTERS)
        assert all(f.detail for f in verdict.filters)
    by_node = {v.node: v for v in decision.verdicts}
    cordoned = by_node["n3"]
    assert [f.reason_code for f in cordoned.filters if not f.passed] == [CORDONED]
    memory = next(f for f in by_node["n0"].filters if f.name == "memory")
    assert memory.reason_code == INSUFFICIENT_MEMORY
    assert memory.detail == "need 8Gi, free 6Gi of 16Gi"


def test_explain_orders_feasible_best_first_and_scores_them() -> None:
    nodes = [make_node(f"n{i}") for i in range(5)]
    allocs = [make_alloc("a", "n2", 2, "8Gi"), make_alloc("b", "n4", 1, "2Gi")]
    decision = explain(make_request(), make_snapshot(nodes, allocs))
    assert decision.verdicts is not None
    assert decision.node == "n2" == decision.verdicts[0].node
    totals = [v.total for v in decision.verdicts]
    assert totals == sorted(totals, reverse=True)
    assert all(v.scores for v in decision.verdicts if v.passed)


@pytest.mark.parametrize("count", [1, 3, 20, 200], ids=["1", "3", "20", "200"])
@pytest.mark.parametrize("strategy", ["binpack", "spread"])
def test_place_agrees_with_explain(count: int, strategy: str) -> None:
    nodes = [make_node(f"n{i}", vcpus=2 + i % 5, memory=f"{4 + i % 7}Gi") for i in range(count)]
    allocs = [make_alloc(f"a{i}", f"n{i}", 1, f"{1 + i % 3}Gi") for i in range(0, count, 2)]
    snap = make_snapshot(nodes, allocs)
    config = SchedulerConfig(strategy=strategy, sample=4)
    for j in range(10):
        request = make_request(f"p{j}", vcpus=1 + j % 3, memory=f"{1 + j % 4}Gi")
        fast, full = place(request, snap, config), explain(request, snap, config)
        assert fast.node == full.node
        assert fast.score == full.score
        assert full.verdicts is not None
        sampled = [v for v in full.verdicts if v.in_sample]
        assert len(sampled) == fast.feasible
        assert fast.node is None or fast.node in {v.node for v in sampled}


def test_decisions_are_deterministic() -> None:
    snap = make_cluster(50)
    request = make_request("replay-me")
    first = place(request, snap)
    for _ in range(3):
        assert place(request, make_cluster(50)) == first
    # Ties (identical empty nodes) are broken by the name-seeded walk, not always the same node.
    chosen = {place(make_request(f"p{i}"), snap).node for i in range(40)}
    assert len(chosen) > 5


def test_sample_bounds_the_scan_on_large_clusters() -> None:
    snap = make_cluster(1000)
    config = SchedulerConfig(sample=8)
    limit = config.sample_limit(1000)
    assert limit == 10  # ceil(log2 1000) beats the configured 8
    decision = place(make_request(), snap, config)
    assert decision.feasible == limit and decision.evaluated == limit


def test_sample_none_scores_everything() -> None:
    decision = place(make_request(), make_cluster(30), SchedulerConfig(sample=None))
    assert decision.feasible == 30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": ("ready", "nope")}, "unknown filters"),
        ({"filters": ("ready", "ready")}, "duplicate"),
        ({"weights": {"bogus": 1.0}}, "unknown scorers"),
        ({"weights": {"binpack": -1.0}}, "finite"),
        ({"strategy": "random"}, "unknown strategy"),
        ({"sample": 0}, "sample"),
    ],
    ids=["unknown-filter", "duplicate-filter", "unknown-scorer", "negative-weight",
         "unknown-strategy", "zero-sample"],
)
def test_config_refuses_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SchedulerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"vcpus": 0}, {"memory": 0}, {"max_per_node": 0}, {"strategy": "fast"}, {"name": ""}],
    ids=["vcpus", "memory", "max-per-node", "strategy", "name"],
)
def test_invalid_requests_are_refused_not_scheduled(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_request(**kwargs)  # type: ignore[arg-type]


def test_place_batch_consumes_earlier_placements() -> None:
    snap = make_cluster(2, vcpus=1, memory="4Gi", cpu_ratio=1.0)
    requests = [make_request(f"p{i}", memory="3Gi") for i in range(3)]
    result = place_batch(requests, snap)
    placed = [d.node for d in result.decisions]
    assert sorted(n for n in placed if n) == ["node-0", "node-1"]
    assert placed[2] is None
    assert "2 not enough vCPUs (need 1, largest free 0)" in result.decisions[2].reason
    assert {a.partition for a in result.snapshot.allocations} == {"p0", "p1"}
    assert result.snapshot.usage("node-0").memory_bytes == 3 << 30
    # The input snapshot is untouched.
    assert snap.usage("node-0").memory_bytes == 0 and snap.allocations == ()


def test_place_batch_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError, match="twice"):
        place_batch([make_request("p"), make_request("p")], make_cluster(2))


def test_consume_derives_without_touching_the_parent() -> None:
    snap = make_cluster(3)
    one = snap.consume(make_alloc("a", "node-1", 2, "2Gi", group="g"))
    two = one.consume(make_alloc("b", "node-1", 1, "1Gi", group="g"))
    assert snap.usage("node-1").vcpus == 0
    assert one.usage("node-1").vcpus == 2
    assert two.usage("node-1").vcpus == 3 and two.usage("node-1").groups == {"g": 2}
    assert [a.partition for a in two.allocations] == ["a", "b"]
    assert two.nodes is snap.nodes  # the node table is shared, not copied


def test_snapshot_rejects_a_partition_allocated_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        make_snapshot([make_node("n")], [make_alloc("a", "n"), make_alloc("a", "n")])


def test_selector_and_group_reasons() -> None:
    nodes = [make_node("a", labels={"zone": "a"}), make_node("b", labels={"zone": "b"})]
    snap = make_snapshot(nodes, [make_alloc("w1", "a", group="web")])
    decision = place(make_request("w2", selector={"zone": "a"}, group="web"), snap)
    assert decision.reason == (
        "0/2 nodes available: 1 node selector mismatch (zone=a);"
        " 1 anti-affinity group web full (max 1 per node)"
    )


def test_batch_reuses_the_pending_reason_for_an_identical_shape() -> None:
    snap = make_cluster(3, vcpus=1, memory="1Gi", cpu_ratio=1.0)
    requests = [make_request(f"p{i}", memory="2Gi") for i in range(3)]
    requests.append(make_request("small", memory="512Mi"))
    first, second, third, small = place_batch(requests, snap).decisions
    assert first.node is None and first.evaluated == 3
    assert second.reason == third.reason == first.reason
    assert second.evaluated == 0  # served without scanning again
    assert small.node is not None  # a different shape is looked at afresh
