"""Scorer: spread, place on the least allocated node first."""

from __future__ import annotations

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Scorer, utilization_after


class SpreadScorer(Scorer):
    """Scores a node by how empty it would be after the placement (1 = completely empty)."""

    name = "spread"

    def applies(self, request: PartitionRequest, strategy: str) -> bool:
        return strategy == "spread"

    def score(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> float:
        return 1.0 - utilization_after(request, node, usage)
