"""Filter: the node is not cordoned (closed to new partitions)."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Failure, Filter

CORDONED = "Cordoned"


class CordonedFilter(Filter):
    """Rejects cordoned nodes."""

    name = "cordoned"
    reasons = (CORDONED,)

    def check(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        return CORDONED if node.cordoned else ""

    def detail(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        return "node is cordoned" if node.cordoned else "node is schedulable"

    def summary(self, request: PartitionRequest, failures: Sequence[Failure]) -> str:
        return "cordoned"
