"""Scheduler domain types: nodes, requests, allocations, the snapshot and decisions."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ARCHES",
    "STRATEGIES",
    "Allocation",
    "Decision",
    "FilterResult",
    "NodeInfo",
    "NodeUsage",
    "NodeVerdict",
    "PartitionRequest",
    "ScoreResult",
    "Snapshot",
    "usage_of",
    "walk_order",
]

ARCHES = frozenset({"x86_64", "i386"})
STRATEGIES = frozenset({"binpack", "spread"})
_NO_GROUPS: Mapping[str, int] = MappingProxyType({})


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's capacity and capabilities as the scheduler sees them."""

    name: str
    vcpus: int
    memory_bytes: int
    arches: frozenset[str] = ARCHES
    labels: Mapping[str, str] = field(default_factory=dict)
    cordoned: bool = False
    ready: bool = True
    cpu_allocation_ratio: float = 4.0
    memory_allocation_ratio: float = 1.0
    # Derived once here so the filters' hot path does no arithmetic on ratios.
    allocatable_vcpus: float = field(init=False, repr=False, compare=False)
    allocatable_memory: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("node name must not be empty")
        if self.vcpus < 0 or self.memory_bytes < 0:
            raise ValueError(f"node {self.name}: capacity must not be negative")
        if self.cpu_allocation_ratio <= 0 or self.memory_allocation_ratio <= 0:
            raise ValueError(f"node {self.name}: allocation ratios must be positive")
        object.__setattr__(self, "arches", frozenset(self.arches))
        object.__setattr__(self, "labels", _frozen(self.labels))
        object.__setattr__(self, "allocatable_vcpus", self.vcpus * self.cpu_allocation_ratio)
        object.__setattr__(
            self, "allocatable_memory", int(self.memory_bytes * self.memory_allocation_ratio)
        )


@dataclass(frozen=True, slots=True)
class PartitionRequest:
    """What one partition asks of a node; invalid requests are refused here, not scheduled."""

    name: str
    vcpus: int
    memory_bytes: int
    arch: str = "x86_64"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    anti_affinity_group: str = ""
    max_per_node: int = 1
    strategy: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("partition name must not be empty")
        if self.vcpus < 1:
            raise ValueError(f"partition {self.name}: vcpus must be at least 1")
        if self.memory_bytes < 1:
            raise ValueError(f"partition {self.name}: memory_bytes must be at least 1")
        if self.max_per_node < 1:
            raise ValueError(f"partition {self.name}: max_per_node must be at least 1")
        if self.strategy and self.strategy not in STRATEGIES:
            raise ValueError(
                f"partition {self.name}: unknown strategy {self.strategy!r}, "
                f"expected one of {sorted(STRATEGIES)} or '' for the cluster default"
            )
        object.__setattr__(self, "node_selector", _frozen(self.node_selector))


@dataclass(frozen=True, slots=True)
class Allocation:
    """A partition bound to a node, holding its resources there."""

    partition: str
    node: str
    vcpus: int
    memory_bytes: int
    anti_affinity_group: str = ""


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """What a node's allocations add up to; replaced, never mutated, when one is added."""

    vcpus: int = 0
    memory_bytes: int = 0
    partitions: int = 0
    groups: Mapping[str, int] = field(default_factory=lambda: _NO_GROUPS)

    def plus(self, vcpus: int, memory_bytes: int, group: str) -> NodeUsage:
        groups = self.groups
        if group:
            counts = dict(groups)
            counts[group] = counts.get(group, 0) + 1
            groups = counts
        return NodeUsage(
            self.vcpus + vcpus, self.memory_bytes + memory_bytes, self.partitions + 1, groups
        )


EMPTY_USAGE = NodeUsage()


@dataclass(frozen=True, slots=True)
class FilterResult:
    """One filter's verdict on one node: reason_code is "" when it passed."""

    name: str
    passed: bool
    reason_code: str
    detail: str


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """One scorer's contribution: raw is in [0, 1], weighted = raw * weight."""

    name: str
    raw: float
    weight: float
    weighted: float


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    """Why a node was accepted or rejected, and how it ranked."""

    node: str
    passed: bool
    filters: tuple[FilterResult, ...]
    scores: tuple[ScoreResult, ...]
    total: float
    #: True if the fast path would have scored this node (it is in the bounded sample).
    in_sample: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one partition: a node, or None with the reason it stays Pending."""

    partition: str
    node: str | None
    reason: str
    verdicts: tuple[NodeVerdict, ...] | None = None
    score: float = 0.0
    #: Nodes looked at, and how many of them were feasible (and scored).
    evaluated: int = 0
    feasible: int = 0
    allocation: Allocation | None = None

    @property
    def placed(self) -> bool:
        return self.node is not None


class _Added:
    """A cons cell: allocations added on top of a snapshot, newest first."""

    __slots__ = ("allocation", "previous")

    def __init__(self, allocation: Allocation, previous: _Added | None) -> None:
        self.allocation = allocation
        self.previous = previous


class _Base:
    """What every snapshot derived from one build shares: nodes, walk order, base usage."""

    __slots__ = ("nodes", "order", "usage", "_allocations", "_source")

    def __init__(
        self, nodes: Mapping[str, NodeInfo], allocations: tuple[Allocation, ...]
    ) -> None:
        self.nodes: Mapping[str, NodeInfo] = MappingProxyType(dict(nodes))
        for name, info in self.nodes.items():
            if name != info.name:
                raise ValueError(f"snapshot key {name!r} does not match node {info.name!r}")
        self.order: tuple[str, ...] = walk_order(self.nodes)
        self._allocations: tuple[Allocation, ...] | None = allocations
        self._source: Callable[[], Iterable[Allocation]] | None = None
        totals: dict[str, list[int]] = {}
        groups: dict[str, dict[str, int]] = {}
        seen: set[str] = set()
        for a in allocations:
            if a.partition in seen:
                raise ValueError(f"partition {a.partition} is allocated twice")
            seen.add(a.partition)
            t = totals.get(a.node)
            if t is None:
                t = totals[a.node] = [0, 0, 0]
            t[0] += a.vcpus
            t[1] += a.memory_bytes
            t[2] += 1
            if a.anti_affinity_group:
                g = groups.setdefault(a.node, {})
                g[a.anti_affinity_group] = g.get(a.anti_affinity_group, 0) + 1
        usage = dict.fromkeys(self.nodes, EMPTY_USAGE)
        for node, (v, m, p) in totals.items():
            usage[node] = NodeUsage(v, m, p, groups.get(node, _NO_GROUPS))
        self.usage: dict[str, NodeUsage] = usage

    @classmethod
    def prepared(cls, nodes: Mapping[str, NodeInfo], order: tuple[str, ...],
                 usage: dict[str, NodeUsage],
                 allocations: Callable[[], Iterable[Allocation]]) -> _Base:
        base = cls.__new__(cls)
        base.nodes = MappingProxyType(nodes)
        base.order = order
        base.usage = usage
        base._allocations = None
        base._source = allocations
        return base

    @property
    def allocations(self) -> tuple[Allocation, ...]:
        if self._allocations is None:
            assert self._source is not None
            self._allocations = tuple(self._source())
        return self._allocations


def walk_order(nodes: Iterable[str]) -> tuple[str, ...]:
    """A fixed shuffle of the sorted names; each request then walks it from its own seeded
    start and stride, so the scan order is replayable and not biased by naming."""
    order = sorted(nodes)
    random.Random(0x5EED).shuffle(order)
    return tuple(order)


def usage_of(entries: Iterable[tuple[int, int, str]]) -> NodeUsage:
    """What a node's allocations (vcpus, memory_bytes, anti-affinity group) add up to."""
    vcpus = memory = count = 0
    groups: dict[str, int] = {}
    for v, m, group in entries:
        vcpus += v
        memory += m
        count += 1
        if group:
            groups[group] = groups.get(group, 0) + 1
    return NodeUsage(vcpus, memory, count, groups or _NO_GROUPS) if count else EMPTY_USAGE


class Snapshot:
    """An immutable view of nodes and allocations; consume() derives the next one cheaply.

    Building is O(nodes + allocations). A derived snapshot shares the base and carries only an
    overlay of the nodes whose usage changed, so placing into it never copies every node.
    """

    __slots__ = ("_base", "_overlay", "_added")

    def __init__(
        self, nodes: Mapping[str, NodeInfo], allocations: Iterable[Allocation] = ()
    ) -> None:
        self._base = _Base(nodes, tuple(allocations))
        self._overlay: Mapping[str, NodeUsage] = _NO_USAGE
        self._added: _Added | None = None

    @classmethod
    def of(cls, nodes: Iterable[NodeInfo], allocations: Iterable[Allocation] = ()) -> Snapshot:
        return cls({n.name: n for n in nodes}, allocations)

    @classmethod
    def prepared(cls, nodes: dict[str, NodeInfo], order: tuple[str, ...],
                 usage: dict[str, NodeUsage],
                 allocations: Callable[[], Iterable[Allocation]]) -> Snapshot:
        """A snapshot from parts kept up to date elsewhere (placement.SnapshotSource), with
        no work per node or allocation: `nodes` and `usage` (every node, EMPTY_USAGE when it
        holds nothing) become the snapshot's own and must not be changed after, `order` is
        walk_order(nodes), and `allocations` lists them only if someone asks."""
        snap = cls.__new__(cls)
        snap._base = _Base.prepared(nodes, order, usage, allocations)
        snap._overlay = _NO_USAGE
        snap._added = None
        return snap

    @classmethod
    def _derive(
        cls, parent: Snapshot, overlay: Mapping[str, NodeUsage], added: _Added | None
    ) -> Snapshot:
        snap = cls.__new__(cls)
        snap._base = parent._base
        snap._overlay = overlay
        snap._added = added
        return snap

    @property
    def nodes(self) -> Mapping[str, NodeInfo]:
        return self._base.nodes

    @property
    def allocations(self) -> tuple[Allocation, ...]:
        added: list[Allocation] = []
        cell = self._added
        while cell is not None:
            added.append(cell.allocation)
            cell = cell.previous
        return self._base.allocations + tuple(reversed(added))

    def __len__(self) -> int:
        return len(self._base.nodes)

    def usage(self, node: str) -> NodeUsage:
        found = self._overlay.get(node)
        return found if found is not None else self._base.usage.get(node, EMPTY_USAGE)

    def consume(self, allocation: Allocation) -> Snapshot:
        """The snapshot with one more allocation (Nova's consume_from_request).

        Copies only the overlay (the nodes changed since the build), never the node table.
        """
        overlay = dict(self._overlay)
        overlay[allocation.node] = self.usage(allocation.node).plus(
            allocation.vcpus, allocation.memory_bytes, allocation.anti_affinity_group
        )
        return Snapshot._derive(self, overlay, _Added(allocation, self._added))


_NO_USAGE: Mapping[str, NodeUsage] = MappingProxyType({})
