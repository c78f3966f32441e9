"""Filter: the node's agent is connected and reports ready."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Failure, Filter

NOT_READY = "NotReady"


class ReadyFilter(Filter):
    """Rejects nodes that are not ready."""

    name = "ready"
    reasons = (NOT_READY,)

    def check(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        return "" if node.ready else NOT_READY

    def detail(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        return "node is ready" if node.ready else "node is not ready"

    def summary(self, request: PartitionRequest, failures: Sequence[Failure]) -> str:
        return "not ready"
