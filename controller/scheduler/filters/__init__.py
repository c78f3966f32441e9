"""Feasibility filters, one small plugin per file, registered by name (cheapest first)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .anti_affinity import GROUP_FULL, AntiAffinityFilter
from .arch import ARCH_UNSUPPORTED, ArchFilter
from .base import Failure, Filter
from .cordoned import CORDONED, CordonedFilter
from .cpu import INSUFFICIENT_CPU, CpuFilter
from .memory import INSUFFICIENT_MEMORY, MemoryFilter
from .ready import NOT_READY, ReadyFilter
from .selector import SELECTOR_MISMATCH, SelectorFilter

__all__ = [
    "ARCH_UNSUPPORTED",
    "CORDONED",
    "DEFAULT_FILTERS",
    "FILTERS",
    "GROUP_FULL",
    "INSUFFICIENT_CPU",
    "INSUFFICIENT_MEMORY",
    "NOT_READY",
    "SELECTOR_MISMATCH",
    "Failure",
    "Filter",
]

# Order is the default stack order, cheapest and most selective first: two attribute reads
# (ready, cordoned), a set lookup (arch), then arithmetic on usage (cpu, memory), then a loop
# over labels (selector) and a dict lookup that only grouped requests need (anti_affinity).
FILTERS: Mapping[str, Filter] = MappingProxyType(
    {
        f.name: f
        for f in (
            ReadyFilter(),
            CordonedFilter(),
            ArchFilter(),
            CpuFilter(),
            MemoryFilter(),
            SelectorFilter(),
            AntiAffinityFilter(),
        )
    }
)
DEFAULT_FILTERS: tuple[str, ...] = tuple(FILTERS)
