"""The placement stack: seeded walk -> filters -> bounded sample -> scorers -> decision."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .config import SchedulerConfig
from .filters import Failure, Filter
from .model import (
    EMPTY_USAGE,
    Allocation,
    Decision,
    FilterResult,
    NodeInfo,
    NodeUsage,
    NodeVerdict,
    PartitionRequest,
    ScoreResult,
    Snapshot,
    _Added,
)

__all__ = ["BatchPlacer", "BatchResult", "explain", "pending_reason", "place", "place_batch"]

_DEFAULT = SchedulerConfig()


def walk(name: str, n: int) -> tuple[int, int]:
    """(start, stride) of the request's seeded walk over the snapshot's node order.

    The seed comes from the partition name alone, so a decision can be replayed. The stride is
    coprime with n, so the walk visits every node exactly once.
    """
    if n <= 1:
        return 0, 1
    seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    start = seed % n
    stride = 1 + (seed >> 32) % (n - 1)
    while math.gcd(stride, n) != 1:
        stride = stride + 1 if stride + 1 < n else 1
    return start, stride


def pending_reason(
    request: PartitionRequest, total: int, failed: Sequence[tuple[Filter, Sequence[Failure]]]
) -> str:
    """One line, grouped by first failing filter, e.g. "0/4 nodes available: 3 cordoned"."""
    if total == 0:
        return "0/0 nodes available: the cluster has no nodes"
    groups = sorted(
        ((f, nodes) for f, nodes in failed if nodes), key=lambda item: -len(item[1])
    )  # stable: equal counts keep stack order
    parts = [f"{len(nodes)} {f.summary(request, nodes)}" for f, nodes in groups]
    return f"0/{total} nodes available: " + "; ".join(parts)


def _scan(
    request: PartitionRequest,
    config: SchedulerConfig,
    nodes: Mapping[str, NodeInfo],
    order: Sequence[str],
    base: Mapping[str, NodeUsage],
    overlay: Mapping[str, NodeUsage],
) -> tuple[Decision, NodeUsage | None]:
    """The fast path: walk nodes in seeded order, stop at `limit` feasible ones, pick the best.

    Returns the decision and the chosen node's usage after the placement (for consume).
    """
    n = len(order)
    # Filters that cannot reject anything for this request are skipped entirely.
    active = [f for f in config.filter_plugins if f.applies(request)]
    rankers = config.rankers(request)
    limit = config.sample_limit(n)
    start, stride = walk(request.name, n)
    failures: dict[Filter, list[Failure]] = {}
    overlay_get = overlay.get
    best_total = -1.0
    best_name = ""
    best_usage = EMPTY_USAGE
    found = 0
    idx = start
    seen = 0
    while seen < n:
        name = order[idx]
        seen += 1
        idx += stride
        if idx >= n:
            idx -= n
        node = nodes[name]
        usage = overlay_get(name) or base[name]
        for f in active:
            if f.check(request, node, usage):
                bucket = failures.get(f)
                if bucket is None:
                    failures[f] = [(node, usage)]
                else:
                    bucket.append((node, usage))
                break
        else:
            total = 0.0
            for scorer, weight in rankers:
                total += weight * scorer.score(request, node, usage)
            # Strictly greater: on a tie the node met first in the seeded walk wins.
            if total > best_total:
                best_total = total
                best_name = name
                best_usage = usage
            found += 1
            if found >= limit:
                break
    if not found:
        ordered = [(f, failures.get(f, ())) for f in active]
        reason = pending_reason(request, n, ordered)
        return Decision(request.name, None, reason, None, 0.0, seen, 0), None
    allocation = Allocation(
        request.name, best_name, request.vcpus, request.memory_bytes, request.anti_affinity_group
    )
    after = best_usage.plus(request.vcpus, request.memory_bytes, request.anti_affinity_group)
    reason = f"scheduled on {best_name}: best of {found} feasible, {seen} of {n} nodes evaluated"
    return (
        Decision(request.name, best_name, reason, None, best_total, seen, found, allocation),
        after,
    )


def place(
    request: PartitionRequest, snapshot: Snapshot, config: SchedulerConfig = _DEFAULT
) -> Decision:
    """Choose a node for one request (fast path: bounded sample, no per-node record)."""
    base = snapshot._base
    return _scan(request, config, base.nodes, base.order, base.usage, snapshot._overlay)[0]


def explain(
    request: PartitionRequest, snapshot: Snapshot, config: SchedulerConfig = _DEFAULT
) -> Decision:
    """Evaluate every node with every filter and scorer; choose as place() would.

    Verdicts list feasible nodes best first (ties in walk order), then rejected nodes by name.
    """
    base = snapshot._base
    order = base.order
    n = len(order)
    rankers = config.rankers(request)
    limit = config.sample_limit(n)
    start, stride = walk(request.name, n)
    # Walk order ranks ties, and marks which feasible nodes fall inside the sample.
    walked = [order[(start + i * stride) % n] for i in range(n)]
    first_failures: dict[Filter, list[Failure]] = {}
    feasible: list[tuple[float, int, NodeVerdict]] = []
    rejected: list[NodeVerdict] = []
    for position, name in enumerate(walked):
        node = base.nodes[name]
        usage = snapshot.usage(name)
        results: list[FilterResult] = []
        first: Filter | None = None
        for f in config.filter_plugins:
            code = f.check(request, node, usage)
            results.append(FilterResult(f.name, not code, code, f.detail(request, node, usage)))
            if code and first is None:
                first = f
        if first is not None:
            first_failures.setdefault(first, []).append((node, usage))
            rejected.append(NodeVerdict(name, False, tuple(results), (), 0.0))
            continue
        scores = []
        for scorer, weight in rankers:
            raw = scorer.score(request, node, usage)
            scores.append(ScoreResult(scorer.name, raw, weight, raw * weight))
        total = 0.0
        for s in scores:  # same summation order as the fast path: identical floats
            total += s.weighted
        in_sample = len(feasible) < limit
        verdict = NodeVerdict(name, True, tuple(results), tuple(scores), total, in_sample)
        feasible.append((total, position, verdict))
    rejected.sort(key=lambda v: v.node)
    if not feasible:
        ordered = [(f, first_failures.get(f, ())) for f in config.filter_plugins]
        reason = pending_reason(request, n, ordered)
        return Decision(request.name, None, reason, tuple(rejected), 0.0, n, 0)
    sample = feasible[:limit]
    best_total, _, best = max(sample, key=lambda item: (item[0], -item[1]))
    feasible.sort(key=lambda item: (-item[0], item[1]))
    verdicts = tuple(v for _, _, v in feasible) + tuple(rejected)
    allocation = Allocation(
        request.name, best.node, request.vcpus, request.memory_bytes, request.anti_affinity_group
    )
    reason = (
        f"scheduled on {best.node}: best of {len(sample)} sampled,"
        f" {len(feasible)} of {n} nodes feasible"
    )
    return Decision(
        request.name, best.node, reason, verdicts, best_total, n, len(feasible), allocation
    )


def _shape(request: PartitionRequest) -> tuple[object, ...]:
    """Everything feasibility depends on; the name and strategy only change the ranking."""
    group = request.anti_affinity_group
    return (
        request.vcpus,
        request.memory_bytes,
        request.arch,
        tuple(sorted(request.node_selector.items())) if request.node_selector else (),
        group,
        request.max_per_node if group else 0,
    )


class BatchPlacer:
    """Places requests one after another, consuming each placement before the next one.

    Holds one mutable overlay of changed nodes (never a copy of the node table); snapshot()
    freezes the result. Not thread-safe; one placer per scheduling pass.

    Within a pass usage only grows, so a request shape that fit nowhere still fits nowhere:
    later requests of the same shape reuse that pending reason (as of the first failure)
    instead of scanning every node again, which is what a full cluster would otherwise cost.
    """

    def __init__(self, snapshot: Snapshot, config: SchedulerConfig = _DEFAULT) -> None:
        self._parent = snapshot
        self._config = config
        base = snapshot._base
        self._nodes = base.nodes
        self._order = base.order
        self._usage = base.usage
        self._overlay: dict[str, NodeUsage] = dict(snapshot._overlay)
        self._added = snapshot._added
        self._unplaceable: dict[tuple[object, ...], str] = {}

    def place(self, request: PartitionRequest) -> Decision:
        shape = _shape(request)
        reason = self._unplaceable.get(shape)
        if reason is not None:
            return Decision(request.name, None, reason)
        decision, after = _scan(
            request, self._config, self._nodes, self._order, self._usage, self._overlay
        )
        if after is not None and decision.allocation is not None:
            self._overlay[decision.allocation.node] = after
            self._added = _Added(decision.allocation, self._added)
        else:
            self._unplaceable[shape] = decision.reason
        return decision

    def snapshot(self) -> Snapshot:
        return Snapshot._derive(self._parent, dict(self._overlay), self._added)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Decisions in request order, and the snapshot with every placement consumed."""

    decisions: tuple[Decision, ...]
    snapshot: Snapshot


def place_batch(
    requests: Iterable[PartitionRequest],
    snapshot: Snapshot,
    config: SchedulerConfig = _DEFAULT,
) -> BatchResult:
    """Place many requests in order; each sees the placements made before it."""
    placer = BatchPlacer(snapshot, config)
    seen: set[str] = set()
    decisions = []
    for request in requests:
        if request.name in seen:
            raise ValueError(f"partition {request.name} appears twice in the batch")
        seen.add(request.name)
        decisions.append(placer.place(request))
    return BatchResult(tuple(decisions), placer.snapshot())
