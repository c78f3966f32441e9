"""capacity_plan: the N+1 check (lose the largest node, re-place its HA partitions)."""

from __future__ import annotations

from sched_factories import make_alloc, make_node, make_request, make_snapshot

from controller.scheduler import Snapshot, capacity_plan


def test_survives_losing_the_largest_node() -> None:
    nodes = [make_node("big", memory="32Gi"), make_node("a"), make_node("b")]
    allocs = [make_alloc("ha1", "big", 1, "8Gi"), make_alloc("ha2", "big", 1, "8Gi")]
    ha = [make_request("ha1", memory="8Gi"), make_request("ha2", memory="8Gi")]
    plan = capacity_plan(make_snapshot(nodes, allocs), ha)
    assert plan.lost_node == "big"
    assert plan.ok and not plan.unplaced
    assert sorted(d.partition for d in plan.placed) == ["ha1", "ha2"]
    assert all(d.node in {"a", "b"} for d in plan.placed)


def test_reports_what_does_not_fit() -> None:
    nodes = [make_node("big", memory="32Gi"), make_node("small", memory="8Gi")]
    allocs = [
        make_alloc("ha-large", "big", 1, "16Gi"),
        make_alloc("ha-small", "big", 1, "4Gi"),
        make_alloc("not-ha", "big", 1, "4Gi"),
    ]
    ha = [make_request("ha-large", memory="16Gi"), make_request("ha-small", memory="4Gi")]
    plan = capacity_plan(make_snapshot(nodes, allocs), ha)
    assert not plan.ok
    assert [d.partition for d in plan.unplaced] == ["ha-large"]
    assert "not enough memory (need 16Gi, largest free 8Gi)" in plan.unplaced[0].reason
    assert [d.partition for d in plan.placed] == ["ha-small"]
    assert "ha-large" in plan.summary


def test_ties_on_size_pick_the_most_allocated_node() -> None:
    nodes = [make_node("x"), make_node("y")]
    snap = make_snapshot(nodes, [make_alloc("p", "y", 1, "4Gi")])
    assert capacity_plan(snap, []).lost_node == "y"
    assert capacity_plan(make_snapshot(nodes), []).lost_node == "x"


def test_ha_partitions_elsewhere_are_left_alone() -> None:
    nodes = [make_node("big", memory="32Gi"), make_node("a")]
    snap = make_snapshot(nodes, [make_alloc("ha", "a", 1, "8Gi")])
    plan = capacity_plan(snap, [make_request("ha", memory="8Gi")])
    assert plan.ok and plan.placed == () and plan.lost_node == "big"


def test_empty_cluster() -> None:
    plan = capacity_plan(Snapshot({}), [])
    assert plan.ok and plan.lost_node is None
