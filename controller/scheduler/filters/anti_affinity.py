"""Filter: at most max_per_node partitions of one anti-affinity group on a node."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Failure, Filter

GROUP_FULL = "AntiAffinity"


class AntiAffinityFilter(Filter):
    """Rejects nodes that already hold max_per_node members of the request's group."""

    name = "anti_affinity"
    reasons = (GROUP_FULL,)

    def applies(self, request: PartitionRequest) -> bool:
        return bool(request.anti_affinity_group)

    def check(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        group = request.anti_affinity_group
        if group and usage.groups.get(group, 0) >= request.max_per_node:
            return GROUP_FULL
        return ""

    def detail(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        group = request.anti_affinity_group
        if not group:
            return "no anti-affinity group"
        have = usage.groups.get(group, 0)
        return f"group {group}: {have} on node, max {request.max_per_node}"

    def summary(self, request: PartitionRequest, failures: Sequence[Failure]) -> str:
        return (
            f"anti-affinity group {request.anti_affinity_group} full"
            f" (max {request.max_per_node} per node)"
        )
