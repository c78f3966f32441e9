"""Prometheus metrics of an in-process replica (scraped over HTTP from --metrics-listen), and
`last heartbeat` kept current (from this replica's session, and from the lease on another
replica)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from inproc import Api, FakeAgent, compile_hello, create, get, push, replica, wait_for
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from viridian.v1 import controller_pb2 as cpb

from controller.metrics_http import MetricsServer


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


@pytest.fixture
def api(etcd_endpoint: str, prefix: str) -> Iterator[Api]:
    yield from replica(etcd_endpoint, prefix, metrics_listen="127.0.0.1:0")


def scrape(api: Api) -> dict[str, Metric]:
    server = api.replica.metrics_server
    assert isinstance(server, MetricsServer)
    with urllib.request.urlopen(server.url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {m.name: m for m in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], name: str, suffix: str = "",
          **labels: str) -> float:
    """The sample `name + suffix` with these labels (0 if absent)."""
    for s in families[name].samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


def test_names_and_types(api: Api) -> None:
    families = scrape(api)
    expected = {
        "viridian_partitions": "gauge",
        "viridian_scheduling_queue_depth": "gauge",
        "viridian_scheduling_attempts": "counter",
        "viridian_scheduling_pass_seconds": "histogram",
        "viridian_etcd_txn_seconds": "histogram",
        "viridian_etcd_txn_conflicts": "counter",
        "viridian_sessions_open": "gauge",
        "viridian_heartbeat_age_seconds": "gauge",
        "viridian_lease_renewals": "counter",
        "viridian_heartbeat_ack_seconds": "histogram",
        "viridian_lease_renewal_seconds": "histogram",
        "viridian_event_loop_lag_seconds": "histogram",
        "viridian_image_push_bytes": "counter",
        "viridian_image_push_seconds": "histogram",
        "viridian_image_pull_bytes": "counter",
        "viridian_image_pull_seconds": "histogram",
        "viridian_state_transfer_bytes": "counter",
    }
    assert {n: families[n].type for n in expected if n in families} == expected


def test_counters_move_with_the_cluster(api: Api, elf: bytes) -> None:
    before = scrape(api)
    assert value(before, "viridian_sessions_open") == 0
    image = push(api.stub, "hello", elf)
    agent = FakeAgent(api, "metrics-node", vcpus=4, memory=4 << 30, beat_s=0.1)
    try:
        create(api, "m1", vcpus=1, memory_bytes=64 << 20)
        wait_for(lambda: get(api, "m1").status.node == "metrics-node", what="m1 placed")
        wait_for(lambda: value(scrape(api), "viridian_lease_renewals", "_total",
                               result="ok") >= 2, what="lease renewals counted")
        after = scrape(api)
    finally:
        agent.close()
    assert value(after, "viridian_image_push_bytes", "_total") == \
        value(before, "viridian_image_push_bytes", "_total") + image.size_bytes
    assert value(after, "viridian_image_push_seconds", "_count") == 1
    assert value(after, "viridian_scheduling_attempts", "_total", result="placed") >= 1
    assert value(after, "viridian_scheduling_pass_seconds", "_count") >= 1
    assert value(after, "viridian_etcd_txn_seconds", "_count") > \
        value(before, "viridian_etcd_txn_seconds", "_count")
    assert value(after, "viridian_sessions_open") == 1
    # Every heartbeat acked went through a renewal; each was observed once.
    assert value(after, "viridian_heartbeat_ack_seconds", "_count") >= 2
    assert value(after, "viridian_lease_renewal_seconds", "_count") >= 2
    assert value(after, "viridian_event_loop_lag_seconds", "_count") >= 1
    age = value(after, "viridian_heartbeat_age_seconds", node="metrics-node")
    assert 0 <= age < 2   # a heartbeat every 0.1 s; the ack path is on the same loop
    phases = {s.labels["phase"]: s.value for s in after["viridian_partitions"].samples}
    assert sum(phases.values()) == 1 and phases.get("pending", 0) == 0
    assert value(after, "viridian_scheduling_queue_depth") == 0


def test_an_unplaceable_partition_counts_and_queues(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    create(api, "nowhere", vcpus=1, memory_bytes=64 << 20)   # no node at all
    wait_for(lambda: value(scrape(api), "viridian_scheduling_attempts", "_total",
                           result="unschedulable") >= 1, what="unschedulable counted")
    assert value(scrape(api), "viridian_scheduling_queue_depth") == 1


def test_two_replicas_keep_their_metrics_apart(etcd_endpoint: str, prefix: str) -> None:
    first = replica(etcd_endpoint, prefix, metrics_listen="127.0.0.1:0")
    second = replica(etcd_endpoint, prefix, metrics_listen="127.0.0.1:0")
    a, b = next(first), next(second)
    try:
        agent = FakeAgent(a, "only-on-a", vcpus=2, memory=1 << 30)
        try:
            wait_for(lambda: value(scrape(a), "viridian_sessions_open") == 1)
            assert value(scrape(b), "viridian_sessions_open") == 0
        finally:
            agent.close()
    finally:
        for gen in (first, second):
            next(gen, None)


def _seconds(ts: object) -> float:
    assert hasattr(ts, "ToNanoseconds")
    return float(ts.ToNanoseconds()) / 1e9


def test_last_heartbeat_advances_on_the_session_replica(api: Api) -> None:
    agent = FakeAgent(api, "beating", vcpus=2, memory=1 << 30, beat_s=0.1)
    try:
        node = api.stub.GetNode(cpb.GetNodeRequest(name="beating"))
        registered = _seconds(node.status.registered_at)
        # Registration wrote the record once; no heartbeat writes it since.
        stored = node.revision

        def advanced() -> bool:
            got = api.stub.GetNode(cpb.GetNodeRequest(name="beating"))
            return _seconds(got.status.last_heartbeat) > registered + 0.3

        wait_for(advanced, what="last heartbeat after the registration")
        listed = api.stub.ListNodes(cpb.ListNodesRequest())
        entry = next(n for n in listed.nodes if n.name == "beating")
        assert _seconds(entry.status.last_heartbeat) > registered + 0.3
        assert api.stub.GetNode(cpb.GetNodeRequest(name="beating")).revision == stored
    finally:
        agent.close()


def test_last_heartbeat_from_the_lease_on_another_replica(etcd_endpoint: str,
                                                          prefix: str) -> None:
    first = replica(etcd_endpoint, prefix)
    second = replica(etcd_endpoint, prefix)
    a, b = next(first), next(second)
    try:
        agent = FakeAgent(a, "elsewhere", vcpus=2, memory=1 << 30, beat_s=0.1)
        try:
            node = b.stub.GetNode(cpb.GetNodeRequest(name="elsewhere"))
            registered = _seconds(node.status.registered_at)
            # The lease (TTL 2 s) is renewed for each heartbeat: its remaining TTL says when.
            wait_for(lambda: _seconds(b.stub.GetNode(cpb.GetNodeRequest(
                name="elsewhere")).status.last_heartbeat) > registered + 1.5,
                timeout=15, what="last heartbeat from the lease")
        finally:
            agent.close()
    finally:
        for gen in (first, second):
            next(gen, None)


def test_phase_names_are_lower_case_without_the_prefix(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    create(api, "phased", vcpus=1, memory_bytes=64 << 20)
    # The gauge is the replica's cache, which follows etcd by its watch: wait on the gauge.
    phases: set[str] = set()

    def counted() -> bool:
        phases.update(s.labels["phase"] for s in scrape(api)["viridian_partitions"].samples
                      if s.value)
        return bool(phases)

    wait_for(counted, what="the partition counted by phase")
    assert all(p.islower() and not p.startswith("partition_") for p in phases), phases
