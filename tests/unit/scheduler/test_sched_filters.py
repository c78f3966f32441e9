"""Each filter plugin, table-driven: pass/fail, reason code and the numbers in its detail."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from sched_factories import make_alloc, make_node, make_request, make_snapshot

from controller.scheduler import FILTERS, NodeUsage
from controller.scheduler.filters import (
    ARCH_UNSUPPORTED,
    CORDONED,
    GROUP_FULL,
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
    NOT_READY,
    SELECTOR_MISMATCH,
)


@dataclass
class Case:
    id: str
    filter: str
    code: str
    detail: str
    node: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)
    used: list[dict[str, Any]] = field(default_factory=list)


CASES = [
    Case("ready-ok", "ready", "", "node is ready"),
    Case("ready-not", "ready", NOT_READY, "not ready", node={"ready": False}),
    Case("cordoned-ok", "cordoned", "", "schedulable"),
    Case("cordoned", "cordoned", CORDONED, "cordoned", node={"cordoned": True}),
    Case("arch-x86_64", "arch", "", "need x86_64, node runs it"),
    Case("arch-i386", "arch", "", "runs", request={"arch": "i386"}),
    Case(
        "arch-missing", "arch", ARCH_UNSUPPORTED, "cannot run",
        node={"arches": ["x86_64"]}, request={"arch": "i386"},
    ),
    Case("cpu-fits", "cpu", "", "need 2 vCPUs, free 16 of 16 (4 x 4)", request={"vcpus": 2}),
    Case(
        "cpu-exactly-full", "cpu", "", "free 1 of 16",
        request={"vcpus": 1}, used=[{"vcpus": 15}],
    ),
    Case(
        "cpu-over", "cpu", INSUFFICIENT_CPU, "need 2 vCPUs, free 1 of 16",
        request={"vcpus": 2}, used=[{"vcpus": 15}],
    ),
    Case(
        "cpu-ratio-1", "cpu", INSUFFICIENT_CPU, "need 4 vCPUs, free 2 of 4 (4 x 1)",
        node={"cpu_ratio": 1.0}, request={"vcpus": 4}, used=[{"vcpus": 2}],
    ),
    Case(
        "cpu-ratio-fraction", "cpu", "", "free 4 of 6 (4 x 1.5)",
        node={"cpu_ratio": 1.5}, request={"vcpus": 4}, used=[{"vcpus": 2}],
    ),
    Case("mem-fits", "memory", "", "need 8Gi, free 16Gi of 16Gi", request={"memory": "8Gi"}),
    Case(
        "mem-over", "memory", INSUFFICIENT_MEMORY, "need 8Gi, free 6Gi of 16Gi",
        request={"memory": "8Gi"}, used=[{"memory": "10Gi"}],
    ),
    Case(
        "mem-exact", "memory", "", "need 6Gi, free 6Gi of 16Gi",
        request={"memory": "6Gi"}, used=[{"memory": "10Gi"}],
    ),
    Case(
        "mem-overcommit", "memory", "", "free 14Gi of 24Gi",
        node={"memory_ratio": 1.5}, request={"memory": "8Gi"}, used=[{"memory": "10Gi"}],
    ),
    Case("selector-none", "selector", "", "no node selector"),
    Case(
        "selector-match", "selector", "", "labels match zone=a",
        node={"labels": {"zone": "a", "disk": "ssd"}}, request={"selector": {"zone": "a"}},
    ),
    Case(
        "selector-wrong-value", "selector", SELECTOR_MISMATCH, "labels lack zone=b",
        node={"labels": {"zone": "a"}}, request={"selector": {"zone": "b"}},
    ),
    Case(
        "selector-missing-key", "selector", SELECTOR_MISMATCH, "labels lack disk=ssd",
        node={"labels": {"zone": "a"}}, request={"selector": {"zone": "a", "disk": "ssd"}},
    ),
    Case("group-none", "anti_affinity", "", "no anti-affinity group"),
    Case(
        "group-empty-node", "anti_affinity", "", "group web: 0 on node, max 1",
        request={"group": "web"}, used=[{"group": "db"}],
    ),
    Case(
        "group-full", "anti_affinity", GROUP_FULL, "group web: 1 on node, max 1",
        request={"group": "web"}, used=[{"group": "web"}],
    ),
    Case(
        "group-room-for-two", "anti_affinity", "", "group web: 1 on node, max 2",
        request={"group": "web", "max_per_node": 2}, used=[{"group": "web"}],
    ),
    Case(
        "group-two-full", "anti_affinity", GROUP_FULL, "2 on node, max 2",
        request={"group": "web", "max_per_node": 2},
        used=[{"group": "web"}, {"group": "web"}],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_filter(case: Case) -> None:
    node = make_node("n", **case.node)
    allocs = [make_alloc(f"a{i}", "n", **u) for i, u in enumerate(case.used)]
    usage = make_snapshot([node], allocs).usage("n")
    request = make_request(**case.request)
    plugin = FILTERS[case.filter]
    assert plugin.check(request, node, usage) == case.code
    assert case.code in plugin.reasons or case.code == ""
    assert case.detail in plugin.detail(request, node, usage)


@pytest.mark.parametrize("name", list(FILTERS), ids=list(FILTERS))
def test_filter_plugin_shape(name: str) -> None:
    plugin = FILTERS[name]
    assert plugin.name == name
    assert plugin.reasons and all(plugin.reasons)
    assert plugin.__doc__ and "\n" not in plugin.__doc__.strip()


@pytest.mark.parametrize("name", list(FILTERS), ids=list(FILTERS))
def test_filter_skipped_only_when_it_cannot_reject(name: str) -> None:
    """applies() False must mean check() passes every node (the fast path relies on it)."""
    plugin = FILTERS[name]
    request = make_request()
    if plugin.applies(request):
        return
    for node in (make_node(cordoned=True, ready=False, labels={"x": "y"}), make_node()):
        assert plugin.check(request, node, NodeUsage(999, 1 << 50, 9, {"g": 9})) == ""
