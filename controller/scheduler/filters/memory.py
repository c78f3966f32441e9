"""Filter: enough free memory, with allocatable = memory x memory_allocation_ratio."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import NodeInfo, NodeUsage, PartitionRequest
from ..units import format_size
from .base import Failure, Filter

INSUFFICIENT_MEMORY = "InsufficientMemory"


class MemoryFilter(Filter):
    """Rejects nodes whose free memory is less than requested (no over-commit by default)."""

    name = "memory"
    reasons = (INSUFFICIENT_MEMORY,)

    def check(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        if usage.memory_bytes + request.memory_bytes <= node.allocatable_memory:
            return ""
        return INSUFFICIENT_MEMORY

    def detail(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        free = node.allocatable_memory - usage.memory_bytes
        return (
            f"need {format_size(request.memory_bytes)}, free {format_size(free)}"
            f" of {format_size(node.allocatable_memory)}"
        )

    def summary(self, request: PartitionRequest, failures: Sequence[Failure]) -> str:
        largest = max((n.allocatable_memory - u.memory_bytes for n, u in failures), default=0)
        return (
            f"not enough memory (need {format_size(request.memory_bytes)},"
            f" largest free {format_size(largest)})"
        )
