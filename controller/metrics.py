"""A controller replica's Prometheus metrics (docs/observability.md lists them).

Counters and histograms are updated where the work happens (etcd transactions, scheduling
passes, lease renewals, image and state bytes); gauges that describe state (partitions by
phase, queue depth, sessions, heartbeat age) are computed at scrape time from the replica's
cache and session registry, so they cost nothing between scrapes."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from viridian.v1 import types_pb2 as pb

from controller.partitions.machine import needs_placement

if TYPE_CHECKING:
    from controller.gateway.sessions import SessionRegistry
    from controller.store.cache import ClusterCache

FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ControllerMetrics:
    """The instruments of one replica, on a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.scheduling_attempts = Counter(
            "viridian_scheduling_attempts", "Placement decisions by result (placed, "
            "unschedulable, conflict).", ["result"], registry=r)
        self.scheduling_seconds = Histogram(
            "viridian_scheduling_pass_seconds", "Time of one scheduling pass (decide and "
            "commit).", buckets=FAST_BUCKETS, registry=r)
        self.etcd_txn_seconds = Histogram(
            "viridian_etcd_txn_seconds", "Latency of etcd transactions.",
            buckets=FAST_BUCKETS, registry=r)
        self.etcd_txn_conflicts = Counter(
            "viridian_etcd_txn_conflicts", "etcd transactions whose compares failed.",
            registry=r)
        self.etcd_txn_batch_size = Histogram(
            "viridian_etcd_txn_batch_size", "Transactions carried by one request to etcd "
            "(group commit: those that arrived while etcd was busy go together).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.lease_renewals = Counter(
            "viridian_lease_renewals", "Node lease renewals by result (ok, failed, expired).",
            ["result"], registry=r)
        self.heartbeat_ack_seconds = Histogram(
            "viridian_heartbeat_ack_seconds", "From a heartbeat's arrival to its ack being "
            "queued (the wait for a lease renewal begun after it arrived).",
            buckets=FAST_BUCKETS, registry=r)
        self.register_seconds = Histogram(
            "viridian_register_seconds", "From a Register's arrival to its answer (the wait "
            "for its batched etcd transaction).", buckets=FAST_BUCKETS, registry=r)
        self.register_refusals = Counter(
            "viridian_register_refusals", "Registers refused at once because as many nodes "
            "as the replica sets up at a time were already setting up (gateway/admission.py).",
            registry=r)
        self.session_open_seconds = Histogram(
            "viridian_session_open_seconds", "From a Register's answer to the hello of the "
            "session it granted.", buckets=FAST_BUCKETS, registry=r)
        self.gc_pause_seconds = Histogram(
            "viridian_gc_pause_seconds", "Garbage-collection pauses of the replica's "
            "interpreter (the event loop stops for them), by generation.", ["generation"],
            buckets=FAST_BUCKETS, registry=r)
        self.lease_renewal_seconds = Histogram(
            "viridian_lease_renewal_seconds", "Duration of one renewal of this replica's node "
            "lease (an etcd keepalive).", buckets=FAST_BUCKETS, registry=r)
        self.loop_lag_seconds = Histogram(
            "viridian_event_loop_lag_seconds", "How late the replica's event loop ran a "
            "timer due every 100 ms (loop_lag.py).", buckets=FAST_BUCKETS, registry=r)
        self.loop_stall_seconds = Histogram(
            "viridian_event_loop_stall_seconds", "Stalls of the replica's event loop longer "
            "than 0.5 s, by length; the stack of each is logged (loop_lag.py).",
            buckets=SLOW_BUCKETS, registry=r)
        self.image_push_bytes = Counter(
            "viridian_image_push_bytes", "Image bytes received by PushImage.", registry=r)
        self.image_push_seconds = Histogram(
            "viridian_image_push_seconds", "Duration of successful image pushes.",
            buckets=SLOW_BUCKETS, registry=r)
        self.image_pull_bytes = Counter(
            "viridian_image_pull_bytes", "Image bytes served to agents and peers (PullImage).",
            registry=r)
        self.image_pull_seconds = Histogram(
            "viridian_image_pull_seconds", "Duration of PullImage streams served.",
            buckets=SLOW_BUCKETS, registry=r)
        self.state_transfer_bytes = Counter(
            "viridian_state_transfer_bytes", "Saved-state bytes relayed through this replica "
            "(PullState).", registry=r)

    def txn_done(self, seconds: float, succeeded: bool) -> None:
        """EtcdStore's transaction observer."""
        self.etcd_txn_seconds.observe(seconds)
        if not succeeded:
            self.etcd_txn_conflicts.inc()

    def watch(self, cache: ClusterCache, sessions: SessionRegistry) -> None:
        """Add the scrape-time gauges over this replica's cache and sessions."""
        self.registry.register(StateCollector(cache, sessions))


class PartitionTally:
    """Partitions by phase, and how many wait for placement, kept as the cache changes.

    Counted at each scrape, they cost a pass over every partition: 1 s of the event loop at
    100,000 partitions, every scrape (bench/scale.py found it with the stall watch)."""

    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache
        self.phases: Tally[str] = Tally()
        self.queued = 0
        # name -> (phase label, waiting for placement): what each partition adds now
        self._counted: dict[str, tuple[str, bool]] = {}
        cache.subscribe(self._on_change)
        self._recount()

    def _on_change(self, kind: str, name: str) -> None:
        if kind == "":
            self._recount()
        elif kind == "partitions":
            self._count(name)

    def _recount(self) -> None:
        self.phases.clear()
        self.queued = 0
        self._counted.clear()
        for name in self.cache.partitions:
            self._count(name)

    def _count(self, name: str) -> None:
        old = self._counted.pop(name, None)
        if old is not None:
            self.phases[old[0]] -= 1
            if not self.phases[old[0]]:
                del self.phases[old[0]]
            self.queued -= old[1]
        cached = self.cache.partitions.get(name)
        if cached is None:
            return
        p = cached.partition
        now = (_PHASE_LABELS.get(p.status.phase) or _phase_label(p.status.phase),
               needs_placement(p, name in self.cache.bindings))
        self._counted[name] = now
        self.phases[now[0]] += 1
        self.queued += now[1]


def _phase_label(phase: int) -> str:
    try:
        name = pb.PartitionPhase.Name(pb.PartitionPhase.ValueType(phase))
    except ValueError:   # a phase this release does not know (a newer writer)
        return str(phase)
    return name.removeprefix("PARTITION_PHASE_").lower()


_PHASE_LABELS = {v.number: _phase_label(v.number)
                 for v in pb.PartitionPhase.DESCRIPTOR.values}


class StateCollector(Collector):
    """Gauges read at scrape time (on the event loop that owns the cache)."""

    def __init__(self, cache: ClusterCache, sessions: SessionRegistry) -> None:
        self.cache = cache
        self.sessions = sessions
        self.tally = PartitionTally(cache)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []   # the families are known only at collect time: skip auto-describe

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cache = self.cache
        phases, queued = self.tally.phases, self.tally.queued
        by_phase = GaugeMetricFamily("viridian_partitions", "Partitions by phase (this "
                                     "replica's cache).", labels=["phase"])
        for phase in sorted(phases):
            by_phase.add_metric([phase], phases[phase])
        yield by_phase
        yield GaugeMetricFamily("viridian_scheduling_queue_depth", "Partitions waiting for "
                                "placement.", value=queued)
        yield GaugeMetricFamily("viridian_cache_load_seconds", "How long this replica's "
                                "last full load of its cache from etcd took (at start, and "
                                "after a watch could not be resumed).",
                                value=cache.load_seconds)
        sessions = self.sessions.all()
        yield GaugeMetricFamily("viridian_sessions_open", "Agent sessions held by this "
                                "replica.", value=len(sessions))
        age = GaugeMetricFamily("viridian_heartbeat_age_seconds", "Seconds since the last "
                                "heartbeat of each node whose session this replica holds.",
                                labels=["node"])
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:   # collected off the loop (e.g. a test): loop time unknown
            now = None
        if now is not None:
            for s in sessions:
                seen = s.beat_at or s.last_seen
                if seen:
                    age.add_metric([s.node], max(now - seen, 0.0))
        yield age
