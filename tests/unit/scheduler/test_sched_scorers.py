"""Scorer plugins: each scaled to [0, 1]; strategy per cluster, overridable per request."""

from __future__ import annotations

from typing import Any

import pytest
from sched_factories import make_alloc, make_node, make_request, make_snapshot

from controller.scheduler import SCORERS, SchedulerConfig, explain, place


def _usage(used: list[dict[str, Any]]) -> Any:
    node = make_node("n", vcpus=4, memory="16Gi")
    allocs = [make_alloc(f"a{i}", "n", **u) for i, u in enumerate(used)]
    return node, make_snapshot([node], allocs).usage("n")


@pytest.mark.parametrize(
    ("scorer", "request_kw", "used", "expected"),
    [
        ("binpack", {"vcpus": 1, "memory": "1Gi"}, [], (1 / 16 + 1 / 16) / 2),
        ("binpack", {"vcpus": 8, "memory": "8Gi"}, [{"vcpus": 8, "memory": "8Gi"}], 1.0),
        ("spread", {"vcpus": 1, "memory": "1Gi"}, [], 1 - (1 / 16 + 1 / 16) / 2),
        ("spread", {"vcpus": 8, "memory": "8Gi"}, [{"vcpus": 8, "memory": "8Gi"}], 0.0),
        ("group_penalty", {"group": "web", "max_per_node": 3}, [], 1.0),
        ("group_penalty", {"group": "web", "max_per_node": 3}, [{"group": "web"}], 0.5),
        (
            "group_penalty",
            {"group": "web", "max_per_node": 3},
            [{"group": "web"}, {"group": "web"}],
            1 / 3,
        ),
    ],
    ids=[
        "binpack-empty",
        "binpack-full",
        "spread-empty",
        "spread-full",
        "penalty-none",
        "penalty-one",
        "penalty-two",
    ],
)
def test_scorer(
    scorer: str, request_kw: dict[str, Any], used: list[dict[str, Any]], expected: float
) -> None:
    node, usage = _usage(used)
    raw = SCORERS[scorer].score(make_request(**request_kw), node, usage)
    assert 0.0 <= raw <= 1.0
    assert raw == pytest.approx(expected)


def _two_nodes() -> Any:
    busy = make_node("busy", vcpus=4, memory="16Gi")
    idle = make_node("idle", vcpus=4, memory="16Gi")
    return make_snapshot([busy, idle], [make_alloc("x", "busy", 2, "8Gi")])


@pytest.mark.parametrize(
    ("cluster", "request_strategy", "expected"),
    [
        ("binpack", "", "busy"),
        ("spread", "", "idle"),
        ("binpack", "spread", "idle"),
        ("spread", "binpack", "busy"),
    ],
    ids=["binpack-default", "spread-default", "override-to-spread", "override-to-binpack"],
)
def test_strategy(cluster: str, request_strategy: str, expected: str) -> None:
    decision = place(
        make_request(strategy=request_strategy), _two_nodes(), SchedulerConfig(strategy=cluster)
    )
    assert decision.node == expected


def test_group_penalty_moves_member_off_a_node_with_the_group() -> None:
    a, b = make_node("a"), make_node("b")
    snap = make_snapshot([a, b], [make_alloc("w1", "a", group="web"), make_alloc("x", "b")])
    request = make_request("w2", group="web", max_per_node=2)
    # Same load on both nodes: binpack ties, the penalty decides.
    assert place(request, snap).node == "b"


def test_scores_are_weighted() -> None:
    config = SchedulerConfig(weights={"binpack": 3.0})
    decision = explain(make_request(), _two_nodes(), config)
    assert decision.verdicts is not None
    for verdict in decision.verdicts:
        for score in verdict.scores:
            assert score.weighted == pytest.approx(score.raw * score.weight)
        assert verdict.total == pytest.approx(sum(s.weighted for s in verdict.scores))
    assert decision.verdicts[0].scores[0].weight == 3.0


def test_zero_weight_disables_a_scorer() -> None:
    decision = explain(make_request(group="g"), _two_nodes(), SchedulerConfig(
        weights={"group_penalty": 0.0}))
    assert decision.verdicts is not None
    assert [s.name for s in decision.verdicts[0].scores] == ["binpack"]
