"""The feasibility-checker interface every filter plugin implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from ..model import NodeInfo, NodeUsage, PartitionRequest

__all__ = ["Failure", "Filter"]

#: A node a filter rejected, with its usage at the time (for the pending summary).
Failure = tuple[NodeInfo, NodeUsage]


class Filter(ABC):
    """Answers yes or no for one node; a "no" is a reason code, never an exception."""

    #: Plugin name used in SchedulerConfig.filters.
    name: ClassVar[str]
    #: Every reason code check() can return.
    reasons: ClassVar[tuple[str, ...]]

    def applies(self, request: PartitionRequest) -> bool:
        """False when the filter passes every node for this request (lets the fast path skip it)."""
        return True

    @abstractmethod
    def check(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        """"" if the node is feasible, else one of `reasons`. Hot path: no formatting here."""

    @abstractmethod
    def detail(self, request: PartitionRequest, node: NodeInfo, usage: NodeUsage) -> str:
        """The numbers behind the verdict, for explain()."""

    @abstractmethod
    def summary(self, request: PartitionRequest, failures: Sequence[Failure]) -> str:
        """A phrase for the pending reason: "not enough memory (need 8Gi, largest free 6Gi)"."""
