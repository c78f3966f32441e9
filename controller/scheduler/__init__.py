"""Placement: a pure function from (request, snapshot, config) to a decision, with reasons."""

from .capacity import PlanResult, capacity_plan
from .config import DEFAULT_SAMPLE, SchedulerConfig
from .filters import DEFAULT_FILTERS, FILTERS, Filter
from .model import (
    Allocation,
    Decision,
    FilterResult,
    NodeInfo,
    NodeUsage,
    NodeVerdict,
    PartitionRequest,
    ScoreResult,
    Snapshot,
    usage_of,
    walk_order,
)
from .scorers import DEFAULT_WEIGHTS, SCORERS, Scorer
from .stack import BatchPlacer, BatchResult, explain, pending_reason, place, place_batch
from .units import format_size, parse_size

__all__ = [
    "DEFAULT_FILTERS",
    "DEFAULT_SAMPLE",
    "DEFAULT_WEIGHTS",
    "FILTERS",
    "SCORERS",
    "Allocation",
    "BatchPlacer",
    "BatchResult",
    "Decision",
    "Filter",
    "FilterResult",
    "NodeInfo",
    "NodeUsage",
    "NodeVerdict",
    "PartitionRequest",
    "PlanResult",
    "ScoreResult",
    "Scorer",
    "SchedulerConfig",
    "Snapshot",
    "capacity_plan",
    "explain",
    "format_size",
    "parse_size",
    "pending_reason",
    "place",
    "place_batch",
    "usage_of",
    "walk_order",
]
