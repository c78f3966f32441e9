"""N+1 capacity planning (Ganeti's check): can the cluster lose its largest node?"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .config import SchedulerConfig
from .model import Decision, PartitionRequest, Snapshot
from .stack import place_batch

__all__ = ["PlanResult", "capacity_plan"]


@dataclass(frozen=True, slots=True)
class PlanResult:
    """Whether the HA partitions of the lost node all fit elsewhere, and where."""

    lost_node: str | None
    ok: bool
    placed: tuple[Decision, ...]
    unplaced: tuple[Decision, ...]
    summary: str


def capacity_plan(
    snapshot: Snapshot,
    ha_partitions: Iterable[PartitionRequest],
    config: SchedulerConfig | None = None,
) -> PlanResult:
    """Remove the largest node (memory; ties: most allocated, then name) and re-place its HA
    partitions on the rest with place_batch, largest first. Partitions without HA are not
    re-placed: they would become Lost, not restarted.
    """
    cfg = config or SchedulerConfig()
    if len(snapshot) == 0:
        return PlanResult(None, True, (), (), "no nodes")
    lost = min(
        snapshot.nodes.values(),
        key=lambda n: (
            -n.memory_bytes,
            -snapshot.usage(n.name).memory_bytes,
            -snapshot.usage(n.name).vcpus,
            n.name,
        ),
    ).name
    allocations = snapshot.allocations
    on_lost = {a.partition for a in allocations if a.node == lost}
    # Best-fit decreasing: the big ones are the hard ones, place them while there is room.
    moving = sorted(
        (r for r in ha_partitions if r.name in on_lost),
        key=lambda r: (-r.memory_bytes, -r.vcpus, r.name),
    )
    remaining = Snapshot(
        {name: node for name, node in snapshot.nodes.items() if name != lost},
        (a for a in allocations if a.node != lost),
    )
    decisions = place_batch(moving, remaining, cfg).decisions
    placed = tuple(d for d in decisions if d.placed)
    unplaced = tuple(d for d in decisions if not d.placed)
    if unplaced:
        names = ", ".join(d.partition for d in unplaced)
        summary = (
            f"losing {lost} leaves {len(unplaced)} of {len(decisions)} HA partitions"
            f" without a node: {names}"
        )
    else:
        summary = f"losing {lost}: all {len(decisions)} HA partitions fit on the remaining nodes"
    return PlanResult(lost, not unplaced, placed, unplaced, summary)
