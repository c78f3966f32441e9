"""The partition tally behind viridian_partitions and the scheduling-queue gauge is kept as
the cache changes, and always equals a count over every partition (controller/metrics.py)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from viridian.v1 import types_pb2 as pb

from controller.metrics import PartitionTally
from controller.partitions.machine import needs_placement
from controller.store.cache import ClusterCache


@dataclass
class Cached:
    partition: pb.Partition


@dataclass
class FakeCache:
    partitions: dict[str, Cached] = field(default_factory=dict)
    bindings: dict[str, object] = field(default_factory=dict)
    listeners: list[Callable[[str, str], None]] = field(default_factory=list)

    def subscribe(self, listener: Callable[[str, str], None]) -> None:
        self.listeners.append(listener)

    def notify(self, kind: str, name: str) -> None:
        for listener in self.listeners:
            listener(kind, name)


def brute(cache: FakeCache) -> tuple[dict[str, int], int]:
    phases: Counter[str] = Counter()
    queued = 0
    for name, c in cache.partitions.items():
        phase = pb.PartitionPhase.Name(c.partition.status.phase)
        phases[phase.removeprefix("PARTITION_PHASE_").lower()] += 1
        queued += needs_placement(c.partition, name in cache.bindings)
    return dict(phases), queued


def test_the_tally_equals_a_full_count_after_random_changes() -> None:
    rng = random.Random(7)
    cache = FakeCache()
    for i in range(50):   # some exist before the tally does
        p = pb.Partition(name=f"p{i}")
        p.status.phase = rng.choice(pb.PartitionPhase.values())
        cache.partitions[p.name] = Cached(p)
    tally = PartitionTally(cast(ClusterCache, cast(Any, cache)))
    most_queued = 0
    for step in range(2000):
        name = f"p{rng.randrange(80)}"
        what = rng.random()
        if what < 0.5:
            p = pb.Partition(name=name)
            p.status.phase = rng.choice(pb.PartitionPhase.values())
            p.spec.desired_state = rng.choice(pb.DesiredState.values())
            cache.partitions[name] = Cached(p)
            cache.notify("partitions", name)
        elif what < 0.65:
            cache.partitions.pop(name, None)
            cache.notify("partitions", name)
        elif what < 0.9:   # a binding written or deleted: the cache says "partitions"
            if name in cache.bindings:
                del cache.bindings[name]
            else:
                cache.bindings[name] = object()
            cache.notify("partitions", name)
        else:
            cache.notify("nodes", "n1")   # other kinds change nothing here
        if step % 500 == 499:   # a full reload of the cache
            cache.notify("", "")
        assert (dict(tally.phases), tally.queued) == brute(cache), step
        most_queued = max(most_queued, tally.queued)
    assert most_queued > 0, "the run never had a partition waiting for placement"
