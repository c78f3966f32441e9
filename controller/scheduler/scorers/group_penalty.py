"""Scorer: a small penalty for nodes already running members of the request's group."""

from __future__ import annotations

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Scorer


class GroupPenaltyScorer(Scorer):
    """Scores 1 on a node with no member of the group, 1/(1+k) with k members already there.

    Only matters when max_per_node > 1: the filter already excludes full nodes.
    """

    name = "group_penalty"

    def applies(self, request: PartitionRequest, strategy: str) -> bool:
        return bool(request.anti_affinity_group)

    def score(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> float:
        return 1.0 / (1 + usage.groups.get(request.anti_affinity_group, 0))
