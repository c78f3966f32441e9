"""Scorers (rankers), one plugin per file; each scores 0-1 and is multiplied by a weight."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import Scorer, utilization_after
from .binpack import BinpackScorer
from .group_penalty import GroupPenaltyScorer
from .spread import SpreadScorer

__all__ = ["DEFAULT_WEIGHTS", "SCORERS", "Scorer", "utilization_after"]

SCORERS: Mapping[str, Scorer] = MappingProxyType(
    {s.name: s for s in (BinpackScorer(), SpreadScorer(), GroupPenaltyScorer())}
)
# The group penalty is deliberately small next to the strategy: it breaks near-ties in favour
# of nodes without the group, it does not override bin-packing.
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"binpack": 1.0, "spread": 1.0, "group_penalty": 0.25}
)
