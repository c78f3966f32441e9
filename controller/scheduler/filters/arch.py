"""Filter: the node can emulate the partition's architecture."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Failure, Filter

ARCH_UNSUPPORTED = "ArchUnsupported"


class ArchFilter(Filter):
    """Rejects nodes that cannot run the requested guest architecture."""

    name = "arch"
    reasons = (ARCH_UNSUPPORTED,)

    def check(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        return "" if request.arch in node.arches else ARCH_UNSUPPORTED

    def detail(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        verb = "runs" if request.arch in node.arches else "cannot run"
        return f"need {request.arch}, node {verb} it (has {', '.join(sorted(node.arches))})"

    def summary(self, request: PartitionRequest, failures: Sequence[Failure]) -> str:
        return f"cannot run {request.arch}"
