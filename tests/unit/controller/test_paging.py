"""Paged lists over real gRPC on a real etcd: ListPartitions (with its server-side filters),
ListNodes and ListEvents; every page of a listing read at the first page's revision;
hostile page tokens refused with INVALID_ARGUMENT."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from inproc import Api, FakeAgent, code_of, replica, wait_for
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.paging import MAX_PAGE, encode_token, query_digest
from controller.store import now_ts

NAMES = [f"p-{i:03d}" for i in range(25)]


def _partition(i: int) -> pb.Partition:
    return pb.Partition(
        name=f"p-{i:03d}",
        spec=pb.PartitionSpec(image="hello", vcpus=1, memory_bytes=64 << 20,
                              desired_state=pb.DESIRED_STATE_OFF,
                              labels={"tier": "a" if i % 2 else "b"}),
        status=pb.PartitionStatus(
            phase=pb.PARTITION_PHASE_FAILED if i % 5 == 0 else pb.PARTITION_PHASE_OFF,
            node="n1" if i < 12 else "n2", created_at=now_ts()))


@pytest.fixture(scope="module")
def api(etcd_endpoint: str) -> Iterator[Api]:
    for a in replica(etcd_endpoint):
        for i in range(len(NAMES)):
            a.run(a.replica.store.partitions.create(_partition(i), []))
        yield a


def _list(api: Api, **request: Any) -> cpb.ListPartitionsResponse:
    reply: cpb.ListPartitionsResponse = api.stub.ListPartitions(
        cpb.ListPartitionsRequest(**request))
    return reply


def _all(api: Api, **request: Any) -> tuple[list[str], int]:
    """Every name of a listing, and how many pages it took."""
    names: list[str] = []
    token, pages = "", 0
    while True:
        reply = _list(api, page_token=token, **request)
        names += [p.name for p in reply.partitions]
        pages += 1
        token = reply.next_page_token
        if not token:
            return names, pages


def test_pages_are_one_consistent_list_whatever_is_written_between(api: Api) -> None:
    store = api.replica.store
    first = _list(api, page_size=10)
    assert [p.name for p in first.partitions] == NAMES[:10] and first.next_page_token
    # Between pages: one added in the middle, one deleted, one changed.
    added = _partition(99)
    added.name = "p-0155"
    api.run(store.partitions.create(added, []))
    api.run(store.etcd.delete(store.keys.partition("p-020")))
    changed = _partition(16)
    changed.spec.labels["tier"] = "changed"
    api.run(store.etcd.put(store.keys.partition("p-016"), changed.SerializeToString()))
    second = _list(api, page_size=10, page_token=first.next_page_token)
    third = _list(api, page_size=10, page_token=second.next_page_token)
    assert [p.name for p in second.partitions] == NAMES[10:20]
    assert [p.name for p in third.partitions] == NAMES[20:]  # p-020 still, as at page 1
    assert third.next_page_token == ""
    assert second.partitions[6].spec.labels["tier"] == "b"  # p-016 as it was
    # A new listing sees the cluster as it is now.
    now, _ = _all(api, page_size=10)
    assert "p-0155" in now and "p-020" not in now
    api.run(store.etcd.delete(store.keys.partition("p-0155")))
    api.run(store.partitions.create(_partition(20), []))
    api.run(store.etcd.put(store.keys.partition("p-016"),
                           _partition(16).SerializeToString()))


def test_filters_are_applied_by_the_server_across_pages(api: Api) -> None:
    def expect(keep: Any) -> list[str]:
        return [f"p-{i:03d}" for i in range(len(NAMES)) if keep(i)]

    names, pages = _all(api, page_size=3, node="n1", label_selector={"tier": "a"})
    # 3 + 3, then an empty last page: a page that filled up cannot know whether later keys
    # still match without reading them.
    assert names == expect(lambda i: i < 12 and i % 2) and pages == 3
    names, _ = _all(api, page_size=2, phase=pb.PARTITION_PHASE_FAILED)
    assert names == expect(lambda i: i % 5 == 0)
    names, pages = _all(api, page_size=4, name_prefix="p-01")
    assert names == expect(lambda i: 10 <= i < 20) and pages == 3
    names, _ = _all(api, name_prefix="p-01", phase=pb.PARTITION_PHASE_OFF, node="n2")
    assert names == expect(lambda i: 12 <= i < 20 and i % 5)
    assert _all(api, name_prefix="q")[0] == []
    assert _all(api, label_selector={"tier": "none"}) == ([], 1)


def test_page_size_defaults_and_maximum(api: Api) -> None:
    whole = _list(api)  # 0: the default page (500) holds all 25
    assert [p.name for p in whole.partitions] == NAMES and whole.next_page_token == ""
    huge = _list(api, page_size=2**32 - 1)  # served as the maximum, not refused
    assert len(huge.partitions) == 25 and MAX_PAGE == 5000


def test_pages_carry_epochs_of_their_revision(api: Api) -> None:
    store = api.replica.store
    rev = api.run(store.etcd.put(store.keys.binding("p-003"), b"n1"))
    page = _list(api, page_size=5)
    assert {p.name: p.status.epoch for p in page.partitions}["p-003"] == rev
    assert all(p.status.epoch == 0 for p in page.partitions if p.name != "p-003")
    api.run(store.etcd.delete(store.keys.binding("p-003")))


@pytest.mark.parametrize("token", [
    "!!!not-base64!!!",
    base64.urlsafe_b64encode(b"not json").decode(),
    base64.urlsafe_b64encode(b"[1,2]").decode(),
    base64.urlsafe_b64encode(b'{"v":1,"l":"partitions","q":"x","a":"p","r":"7"}').decode(),
    encode_token("nodes", query_digest(), "p-001", 5),   # another list's token
    encode_token("partitions", query_digest(node="n9", labels={}, phase=0, prefix=""),
                 "p-001", 5),                            # other filters
    encode_token("partitions", query_digest(node="", labels={}, phase=0, prefix=""),
                 "p-001", 10**15),                       # a revision never reached
    encode_token("partitions", query_digest(node="", labels={}, phase=0, prefix=""),
                 "p-001", -3),
    "A" * 5000,
    base64.urlsafe_b64encode(
        b'{"v":1,"l":"partitions","q":"%s","a":"\\ud800","r":1}'
        % query_digest(node="", labels={}, phase=0, prefix="").encode()).decode(),
], ids=["garbage", "not-json", "not-object", "string-revision", "other-list",
        "other-filters", "future", "negative", "huge", "lone-surrogate"])
def test_hostile_page_tokens_are_invalid_arguments(api: Api, token: str) -> None:
    code, msg = code_of(lambda: _list(api, page_token=token))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in msg
    assert "\n" not in msg


def test_a_token_past_every_name_is_an_empty_last_page(api: Api) -> None:
    query = query_digest(node="", labels={}, phase=0, prefix="p-01")
    revision = api.run(api.replica.store.etcd.revision())
    for after in ("\U0010ffff", "q", "p-02", "a"):
        reply = _list(api, name_prefix="p-01",
                      page_token=encode_token("partitions", query, after, revision))
        names = [p.name for p in reply.partitions]
        assert names == ([] if after != "a" else NAMES[10:20])
        assert reply.next_page_token == ""


def test_a_token_of_this_server_continues_only_its_listing(api: Api) -> None:
    first = _list(api, page_size=5, node="n1")
    code, _ = code_of(lambda: _list(api, page_size=5, node="n2",
                                    page_token=first.next_page_token))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: api.stub.ListEvents(cpb.ListEventsRequest(
        page_token=first.next_page_token)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    rest = _list(api, page_size=5, node="n1", page_token=first.next_page_token)
    assert [p.name for p in rest.partitions] == NAMES[5:10]


def test_nodes_are_paged_with_their_usage(api: Api) -> None:
    agents = [FakeAgent(api, f"node-{i}", 2, 1 << 30) for i in range(5)]
    try:
        seen: list[pb.Node] = []
        token, pages = "", 0
        while True:
            reply = api.stub.ListNodes(cpb.ListNodesRequest(page_size=2, page_token=token))
            seen += reply.nodes
            pages += 1
            token = reply.next_page_token
            if not token:
                break
        assert [n.name for n in seen] == [f"node-{i}" for i in range(5)] and pages == 3
        assert all(n.status.state == pb.NODE_STATE_READY for n in seen)
        assert all(n.status.allocatable_vcpus > 0 for n in seen)
    finally:
        for a in agents:
            a.close()


def test_events_are_paged_oldest_first_and_limit_keeps_the_newest(api: Api) -> None:
    events = api.replica.store.events
    for i in range(12):
        api.run(events.record("Partition", "ev-x" if i % 3 else "ev-y", f"R{i}", f"m{i}"))

    def listing(**request: Any) -> tuple[list[str], int]:
        reasons: list[str] = []
        token, pages = "", 0
        while True:
            reply = api.stub.ListEvents(cpb.ListEventsRequest(page_token=token, **request))
            reasons += [e.reason for e in reply.events]
            pages += 1
            token = reply.next_page_token
            if not token:
                return reasons, pages

    x = [f"R{i}" for i in range(12) if i % 3]
    assert listing(object="ev-x", page_size=3) == (x, 3)
    assert listing(object="ev-x", page_size=2, limit=3) == (x[-3:], 2)
    assert listing(object="ev-y", limit=100)[0] == [f"R{i}" for i in range(0, 12, 3)]
    assert listing(object="ev-none", page_size=1) == ([], 1)


def test_pages_stay_under_the_message_limit_whatever_the_records_hold(api: Api) -> None:
    """Partitions with 120 KiB of arguments each: a page of the default size would be far
    above gRPC's 4 MiB limit; pages are cut at 2 MiB of records instead, and together they
    still hold every partition once."""
    store = api.replica.store
    big = []
    for i in range(40):
        p = _partition(i)
        p.name = f"big-{i:02d}"
        p.spec.args.extend(["x" * 1024] * 120)
        api.run(store.partitions.create(p, []))
        big.append(p.name)
    names: list[str] = []
    token, pages = "", 0
    while True:
        reply = _list(api, name_prefix="big-", page_token=token)
        assert reply.ByteSize() < 4 << 20
        names += [p.name for p in reply.partitions]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert names == big and pages >= 3
    for name in big:
        api.run(store.etcd.delete(store.keys.partition(name)))


def test_a_range_too_large_for_the_channel_is_read_in_smaller_pieces(
        etcd_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel that receives at most 1 MiB: 1000-key ranges of 100 KiB values do not fit
    in one answer, and the store asks for fewer keys until they do."""
    import asyncio

    from controller.store import _endpoints
    from controller.store.etcd import EtcdStore

    small = [(k, v) for k, v in _endpoints.CHANNEL_OPTIONS
             if k != "grpc.max_receive_message_length"]
    monkeypatch.setattr(_endpoints, "CHANNEL_OPTIONS",
                        [*small, ("grpc.max_receive_message_length", 1 << 20)])

    async def scenario() -> None:
        etcd = EtcdStore([etcd_endpoint])
        for i in range(30):
            await etcd.put(f"{prefix}/v{i:02d}", bytes([i]) * (100 << 10))
        kvs, _ = await etcd.get_prefix_paged(prefix + "/")
        assert [kv.value[0] for kv in kvs] == list(range(30))
        assert all(len(kv.value) == 100 << 10 for kv in kvs)
        etcd.close()

    asyncio.run(scenario())


def test_a_page_of_draining_nodes_is_cut_under_the_message_limit(api: Api) -> None:
    """Each node's drain lists 25,000 partitions (about 1 MiB): five of them would make a
    6 MiB answer. The page is cut where it would pass 2 MiB, and the next one goes on after
    the last node sent."""
    names = [f"drained-{i}" for i in range(5)]
    for name in names:
        FakeAgent(api, name, 2, 1 << 30).close()
    nodes = api.replica.store.nodes
    pending = [f"some-partition-name-{j:06d}" for j in range(25000)]
    for name in names:
        op = pb.NodeOperation(kind=pb.NodeOperation.KIND_DRAIN, node=name,
                              state=pb.NodeOperation.STATE_RUNNING, pending=pending)
        api.run(nodes.put_operation(op, 0, fenced=False))
    cache = api.replica.store.cache
    wait_for(lambda: all(n in cache.drains for n in names), what="drains in the cache")
    seen: list[str] = []
    token, pages = "", 0
    while True:
        reply = api.stub.ListNodes(cpb.ListNodesRequest(page_token=token))
        assert reply.ByteSize() < 4 << 20
        seen += [n.name for n in reply.nodes]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert [n for n in seen if n.startswith("drained-")] == names
    assert len(seen) == len(set(seen)) and pages >= 3


def test_fitting_keeps_one_item_at_least() -> None:
    from controller.api.paging import fitting

    assert fitting([1, 1, 1], budget=2) == 2
    assert fitting([5, 1], budget=2) == 1
    assert fitting([], budget=2) == 0
    assert fitting([1, 1], budget=10) == 2
