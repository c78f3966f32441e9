"""Scheduler configuration; plugin names are resolved (and refused if unknown) at construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .filters import DEFAULT_FILTERS, FILTERS, Filter
from .model import STRATEGIES, PartitionRequest
from .scorers import DEFAULT_WEIGHTS, SCORERS, Scorer

__all__ = ["DEFAULT_SAMPLE", "SchedulerConfig"]

#: Feasible candidates the fast path scores, at least (see SchedulerConfig.sample_limit).
DEFAULT_SAMPLE = 8

Ranker = tuple[Scorer, float]


@dataclass(frozen=True)
class SchedulerConfig:
    """Cluster-wide placement settings.

    strategy: the default for requests that leave it empty ("binpack" or "spread").
    weights: per-scorer weights, merged over DEFAULT_WEIGHTS; a weight of 0 disables a scorer.
    sample: how many feasible nodes the fast path scores before choosing (None: all of them).
    filters: the filter stack, in order.
    """

    strategy: str = "binpack"
    weights: Mapping[str, float] = field(default_factory=dict)
    sample: int | None = DEFAULT_SAMPLE
    filters: tuple[str, ...] = DEFAULT_FILTERS
    filter_plugins: tuple[Filter, ...] = field(init=False, repr=False, compare=False)
    _rankers: Mapping[tuple[str, bool], tuple[Ranker, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r}, expected one of {sorted(STRATEGIES)}"
            )
        unknown = [name for name in self.filters if name not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filters {unknown}, known: {sorted(FILTERS)}")
        if len(set(self.filters)) != len(self.filters):
            raise ValueError(f"duplicate filters in {list(self.filters)}")
        unknown = [name for name in self.weights if name not in SCORERS]
        if unknown:
            raise ValueError(f"unknown scorers {unknown}, known: {sorted(SCORERS)}")
        weights = {**DEFAULT_WEIGHTS, **self.weights}
        for name, weight in weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of {name} must be a finite number >= 0, got {weight}")
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"sample must be at least 1 or None, got {self.sample}")
        object.__setattr__(self, "weights", MappingProxyType(weights))
        object.__setattr__(self, "filters", tuple(self.filters))
        object.__setattr__(self, "filter_plugins", tuple(FILTERS[n] for n in self.filters))
        # Rankers depend only on (effective strategy, grouped?): resolve all four up front.
        rankers: dict[tuple[str, bool], tuple[Ranker, ...]] = {}
        for strategy in STRATEGIES:
            for grouped in (False, True):
                probe = PartitionRequest(
                    "probe", 1, 1, anti_affinity_group="g" if grouped else ""
                )
                rankers[strategy, grouped] = tuple(
                    (s, weights[s.name])
                    for s in SCORERS.values()
                    if weights[s.name] > 0 and s.applies(probe, strategy)
                )
        object.__setattr__(self, "_rankers", MappingProxyType(rankers))

    def strategy_for(self, request: PartitionRequest) -> str:
        return request.strategy or self.strategy

    def rankers(self, request: PartitionRequest) -> tuple[Ranker, ...]:
        """The (scorer, weight) pairs that rank nodes for this request."""
        strategy = request.strategy or self.strategy
        return self._rankers[strategy, bool(request.anti_affinity_group)]

    def sample_limit(self, nodes: int) -> int:
        """Feasible candidates to score: max(2, ceil(log2 n), sample), like Nomad's limit."""
        if self.sample is None:
            return max(nodes, 1)
        bound = math.ceil(math.log2(nodes)) if nodes > 1 else 1
        return max(2, bound, self.sample)
