"""Filter: enough free vCPUs, with allocatable = vcpus x cpu_allocation_ratio."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import NodeInfo, NodeUsage, PartitionRequest
from .base import Failure, Filter

INSUFFICIENT_CPU = "InsufficientCPU"


def _num(x: float) -> str:
    return f"{x:g}"


class CpuFilter(Filter):
    """Rejects nodes whose free (over-committed) vCPUs are fewer than requested."""

    name = "cpu"
    reasons = (INSUFFICIENT_CPU,)

    def check(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        if usage.vcpus + request.vcpus <= node.allocatable_vcpus:
            return ""
        return INSUFFICIENT_CPU

    def detail(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        free = node.allocatable_vcpus - usage.vcpus
        return (
            f"need {request.vcpus} vCPUs, free {_num(free)} of {_num(node.allocatable_vcpus)}"
            f" ({node.vcpus} x {_num(node.cpu_allocation_ratio)})"
        )

    def summary(self, request: PartitionRequest, failures: Sequence[Failure]) -> str:
        largest = max((n.allocatable_vcpus - u.vcpus for n, u in failures), default=0.0)
        return f"not enough vCPUs (need {request.vcpus}, largest free {_num(largest)})"
