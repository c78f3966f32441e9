"""UpdatePartition on one in-process replica over a real etcd (and its pure decision), and
WatchNodes fed by the replica's cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from inproc import Api, FakeAgent, code_of, compile_hello, create, get, push, replica, wait_for
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.update import updated
from controller.errors import FailedPrecondition
from controller.store.records import StoredPartition

U = cpb.UpdatePartitionRequest
OFF = pb.DESIRED_STATE_OFF


@pytest.fixture(scope="module")
def api(etcd_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    for a in replica(etcd_endpoint):
        push(a.stub, "hello", compile_hello(tmp_path_factory.mktemp("guest")))
        yield a


def events_of(api: Api, name: str) -> list[pb.Event]:
    return list(api.stub.ListEvents(cpb.ListEventsRequest(object=name)).events)


def test_labels_restart_vcpus_memory_while_off(api: Api) -> None:
    create(api, "upd-off", desired_state=OFF, labels={"tier": "web", "old": "x"})
    before = get(api, "upd-off")
    assert before.status.phase == pb.PARTITION_PHASE_OFF
    after = api.stub.UpdatePartition(U(
        name="upd-off", set_labels={"tier": "db", "zone": "a"}, remove_labels=["old"],
        restart_policy=pb.RESTART_POLICY_ON_FAILURE, vcpus=2, memory_bytes=256 << 20))
    stored = get(api, "upd-off")
    for p in (after, stored):
        assert dict(p.spec.labels) == {"tier": "db", "zone": "a"}
        assert p.spec.restart_policy == pb.RESTART_POLICY_ON_FAILURE
        assert (p.spec.vcpus, p.spec.memory_bytes) == (2, 256 << 20)
        assert p.spec.image_digest == before.spec.image_digest  # the rest is kept
    assert stored.revision > before.revision
    updates = [e for e in events_of(api, "upd-off") if e.reason == "Updated"]
    assert len(updates) == 1
    assert "vCPUs 1 -> 2" in updates[0].message and "label old removed" in updates[0].message


def test_an_update_that_changes_nothing_writes_nothing(api: Api) -> None:
    create(api, "upd-same", desired_state=OFF, labels={"a": "1"}, vcpus=2)
    first = get(api, "upd-same")
    again = api.stub.UpdatePartition(U(name="upd-same", set_labels={"a": "1"}, vcpus=2,
                                       restart_policy=first.spec.restart_policy))
    assert again.revision == first.revision == get(api, "upd-same").revision
    assert not [e for e in events_of(api, "upd-same") if e.reason == "Updated"]


def test_resize_refused_unless_off_labels_always(api: Api) -> None:
    create(api, "upd-pending", vcpus=1)  # desired Running, no node: Pending
    assert get(api, "upd-pending").status.phase == pb.PARTITION_PHASE_PENDING
    code, msg = code_of(lambda: api.stub.UpdatePartition(U(name="upd-pending", vcpus=2)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "Pending" in msg and "Off or Saved" in msg
    code, _ = code_of(lambda: api.stub.UpdatePartition(
        U(name="upd-pending", memory_bytes=128 << 20)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    p = api.stub.UpdatePartition(U(name="upd-pending", set_labels={"team": "ops"}))
    assert p.spec.labels["team"] == "ops" and p.spec.vcpus == 1


@pytest.mark.parametrize(("request_fields", "needle"), [
    ({"vcpus": 99}, "vcpus must be between"),
    ({"memory_bytes": (64 << 20) + 1}, "multiple of 4Ki"),
    ({"memory_bytes": 1 << 40}, "memory must be between"),
    ({"set_labels": {"bad key!": "v"}}, "invalid label key"),
    ({"set_labels": {"k": "v"}, "remove_labels": ["k"]}, "both set and removed"),
    ({"restart_policy": 77}, "unknown restart policy"),
])
def test_invalid_updates_are_refused_like_create(api: Api, request_fields: dict[str, object],
                                                 needle: str) -> None:
    name = f"upd-bad-{abs(hash(needle)) % 10000}"
    create(api, name, desired_state=OFF)
    before = get(api, name)
    code, msg = code_of(lambda: api.stub.UpdatePartition(U(name=name, **request_fields)))  # type: ignore[arg-type]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in msg
    assert get(api, name).revision == before.revision


def test_unknown_partition_and_stale_revision(api: Api) -> None:
    code, _ = code_of(lambda: api.stub.UpdatePartition(U(name="nope", vcpus=2)))
    assert code == grpc.StatusCode.NOT_FOUND
    create(api, "upd-rev", desired_state=OFF)
    rev = get(api, "upd-rev").revision
    api.stub.UpdatePartition(U(name="upd-rev", set_labels={"a": "1"}, expected_revision=rev))
    code, msg = code_of(lambda: api.stub.UpdatePartition(
        U(name="upd-rev", set_labels={"a": "2"}, expected_revision=rev)))
    assert code == grpc.StatusCode.ABORTED and "changed" in msg
    assert get(api, "upd-rev").spec.labels["a"] == "1"


def test_concurrent_updates_lose_nothing(api: Api) -> None:
    """Compare-and-swap: every writer's label survives, whoever wrote first."""
    create(api, "upd-race", desired_state=OFF)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            api.stub.UpdatePartition(U(name="upd-race", set_labels={f"k{i}": str(i)}))
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert dict(get(api, "upd-race").spec.labels) == {f"k{i}": str(i) for i in range(6)}


def _stored(phase: int, **status: object) -> StoredPartition:
    p = pb.Partition(name="p", spec=pb.PartitionSpec(image="hello", vcpus=1,
                                                     memory_bytes=64 << 20),
                     status=pb.PartitionStatus(phase=phase, **status))  # type: ignore[arg-type]
    return StoredPartition(p, 10)


def test_saved_allows_vcpus_but_not_memory() -> None:
    saved = _stored(pb.PARTITION_PHASE_SAVED,
                    saved_state=pb.StateRef(digest="sha256:" + "a" * 64))
    out = updated(saved, U(name="p", vcpus=2))
    assert out.write and out.partition.spec.vcpus == 2
    with pytest.raises(FailedPrecondition, match="saved state"):
        updated(saved, U(name="p", memory_bytes=128 << 20))


def test_memory_refused_while_checkpoints_hold_state() -> None:
    cp = pb.Checkpoint(name="before", state=pb.StateRef(digest="sha256:" + "b" * 64),
                       taken_in=pb.PARTITION_PHASE_RUNNING)
    off = _stored(pb.PARTITION_PHASE_OFF, checkpoints=[cp])
    with pytest.raises(FailedPrecondition, match="before"):
        updated(off, U(name="p", memory_bytes=128 << 20))
    assert updated(off, U(name="p", vcpus=3)).partition.spec.vcpus == 3


def test_watch_nodes_sends_every_node_then_changes(api: Api) -> None:
    agent = FakeAgent(api, "wn-node", vcpus=2, memory=1 << 30)
    try:
        call = api.stub.WatchNodes(cpb.WatchNodesRequest(name="wn-node"), timeout=30)
        first = next(call)
        assert first.type == cpb.NodeWatchEvent.TYPE_PUT and first.node.name == "wn-node"
        assert first.node.status.allocatable_vcpus == 8  # with its usage, as GetNode
        api.stub.CordonNode(cpb.CordonNodeRequest(name="wn-node"))
        cordoned = wait_for(lambda: (e := next(call)).node.spec.cordoned and e,
                            what="cordon seen by the watch")
        assert cordoned.node.name == "wn-node"
        call.cancel()
    finally:
        agent.close()
