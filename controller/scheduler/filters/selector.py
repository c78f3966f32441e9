"""Filter: the node's labels match every key=value of the request's node selector."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Failure, Filter

SELECTOR_MISMATCH = "SelectorMismatch"


def _pairs(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class SelectorFilter(Filter):
    """Rejects nodes missing a selected label or carrying a different value."""

    name = "selector"
    reasons = (SELECTOR_MISMATCH,)

    def applies(self, request: PartitionRequest) -> bool:
        return bool(request.node_selector)

    def check(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        labels = node.labels
        for key, value in request.node_selector.items():
            if labels.get(key) != value:
                return SELECTOR_MISMATCH
        return ""

    def detail(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        if not request.node_selector:
            return "no node selector"
        missing = {
            k: v for k, v in request.node_selector.items() if node.labels.get(k) != v
        }
        if not missing:
            return f"labels match {_pairs(request.node_selector)}"
        return f"labels lack {_pairs(missing)}"

    def summary(self, request: PartitionRequest, failures: Sequence[Failure]) -> str:
        return f"node selector mismatch ({_pairs(request.node_selector)})"
