"""The ranker interface every scorer plugin implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from ..model import NodeInfo, NodeUsage, PartitionRequest

__all__ = ["Scorer", "utilization_after"]


class Scorer(ABC):
    """Scores a feasible node in [0, 1] (higher is better); the stack multiplies by a weight."""

    #: Plugin name used in SchedulerConfig.weights.
    name: ClassVar[str]

    def applies(self, request: PartitionRequest, strategy: str) -> bool:
        """Whether this scorer ranks nodes for this request under the effective strategy."""
        return True

    @abstractmethod
    def score(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> float:
        """A value in [0, 1]; only called for nodes that passed every filter."""


def utilization_after(request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> float:
    """Mean of the vCPU and memory fractions of allocatable in use once the request is placed."""
    cap_v = node.allocatable_vcpus
    cap_m = node.allocatable_memory
    cpu = (usage.vcpus + request.vcpus) / cap_v if cap_v > 0 else 1.0
    mem = (usage.memory_bytes + request.memory_bytes) / cap_m if cap_m > 0 else 1.0
    value = (cpu + mem) * 0.5
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value
