"""Scorer: bin-pack, fill the busiest nodes first so whole nodes stay free."""

from __future__ import annotations

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Scorer, utilization_after


class BinpackScorer(Scorer):
    """Scores a node by how full it would be after the placement (1 = completely full)."""

    name = "binpack"

    def applies(self, request: PartitionRequest, strategy: str) -> bool:
        return strategy == "binpack"

    def score(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> float:
        return utilization_after(request, node, usage)
