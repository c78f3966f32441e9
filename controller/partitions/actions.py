"""Applying state-machine events to stored partitions: read, transition, compare-write."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from viridian.v1 import types_pb2 as pb

from controller.partitions.machine import Event, Outcome, View, created, transition
from controller.store import Store, StoredPartition, now_ts
from controller.store.etcd import Compare


def view_of(sp: StoredPartition) -> View:
    return View(sp.partition, sp.binding_node, sp.binding_revision)


def at_epoch(node: str, epoch: int, event: Event) -> Callable[[StoredPartition], Outcome]:
    """Decide `event` only while the partition is still bound to node at epoch (a report,
    an eviction): re-evaluated on every retry, so a re-bind in between voids it."""

    def decide(sp: StoredPartition) -> Outcome:
        if sp.binding_node != node or (epoch and sp.binding_revision != epoch):
            return Outcome(sp.partition)
        return transition(view_of(sp), event, now_ts())

    return decide


class PartitionActions:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, name: str, spec: pb.PartitionSpec, arch: int, target: str = ""
                     ) -> pb.Partition:
        p = created(name, spec, arch, now_ts())
        if p.status.phase == pb.PARTITION_PHASE_PENDING:
            p.status.target_node = target
        note = f"image {spec.image}, {spec.vcpus} vCPUs, {spec.memory_bytes >> 20}Mi"
        await self.store.partitions.create(p, [("Created", note, False)])
        return p

    async def apply(self, name: str, event: Event, *, from_cache: bool = False,
                    fenced: bool = False, guard: Sequence[Compare] = ()) -> Outcome:
        """Apply one event to partition `name` (domain errors propagate)."""
        return await self.store.partitions.change(
            name, lambda sp: transition(view_of(sp), event, now_ts()),
            from_cache=from_cache, fenced=fenced, guard=guard)

    async def apply_at(self, name: str, node: str, epoch: int, event: Event, *,
                       from_cache: bool = False, fenced: bool = False,
                       guard: Sequence[Compare] = ()) -> Outcome:
        """Apply `event` only if the partition is (still) bound to node at epoch (0 = any
        epoch on node)."""
        return await self.store.partitions.change(
            name, at_epoch(node, epoch, event), from_cache=from_cache, fenced=fenced,
            guard=guard)
