"""GetPartitionStats / WatchStats: agents' usage reports kept in the memory of the replica
holding the session, answered there and relayed to a replica that does not hold it. Two
real replicas on a real etcd, the agent played by the test (inproc.FakeAgent)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from inproc import Api, FakeAgent, code_of, compile_hello, create, push, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

MiB = 1 << 20


@pytest.fixture(scope="module")
def shared_prefix() -> str:
    import uuid

    return f"/stats-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def holder(etcd_endpoint: str, shared_prefix: str) -> Iterator[Api]:
    yield from replica(etcd_endpoint, prefix=shared_prefix)


@pytest.fixture(scope="module")
def other(etcd_endpoint: str, shared_prefix: str, holder: Api) -> Iterator[Api]:
    yield from replica(etcd_endpoint, prefix=shared_prefix)


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


def _get(api: Api, name: str) -> pb.Partition:
    return api.stub.GetPartition(cpb.GetPartitionRequest(name=name))


def _stats(api: Api, name: str) -> cpb.PartitionStats:
    return api.stub.GetPartitionStats(cpb.GetPartitionStatsRequest(name=name))


def _once(api: Api, node: str = "") -> cpb.StatsSnapshot:
    (snap,) = list(api.stub.WatchStats(cpb.WatchStatsRequest(node=node, once=True)))
    return snap


def test_usage_is_answered_by_the_holder_and_relayed_by_the_other_replica(
        holder: Api, other: Api, elf: bytes) -> None:
    push(holder.stub, "hello", elf)
    agent = FakeAgent(holder, "stats-a", vcpus=4, memory=4 << 30)
    try:
        create(holder, "busy", node="stats-a", vcpus=2, memory_bytes=256 * MiB)
        create(holder, "idle", node="stats-a", vcpus=1, memory_bytes=128 * MiB)
        for name in ("busy", "idle"):
            wait_for(lambda n=name: _get(holder, n).status.phase == pb.PARTITION_PHASE_SCHEDULED,  # type: ignore[misc]
                     what=f"{name} scheduled")
            agent.report(apb.PartitionReport(name=name, epoch=_get(holder, name).status.epoch,
                                             phase=pb.PARTITION_PHASE_RUNNING))
        busy_epoch = _get(holder, "busy").status.epoch
        idle_epoch = _get(holder, "idle").status.epoch
        assert not _stats(holder, "busy").measured          # nothing reported yet

        usage = apb.UsageReport(partitions=[
            apb.PartitionUsage(name="busy", epoch=busy_epoch, cpu_seconds=12.5, cpu_cores=1.5,
                               resident_bytes=64 * MiB, uptime_seconds=30.0),
            # a sample of another copy (a stale epoch) does not count as this one's
            apb.PartitionUsage(name="idle", epoch=idle_epoch + 1000, cpu_cores=3.0,
                               resident_bytes=99 * MiB),
        ])
        agent.outgoing.put(apb.AgentMessage(usage=usage))
        busy = wait_for(lambda: (s := _stats(holder, "busy")).measured and s,
                        what="busy measured")
        assert (busy.node, busy.phase, busy.vcpus, busy.memory_bytes) == \
            ("stats-a", pb.PARTITION_PHASE_RUNNING, 2, 256 * MiB)
        assert (busy.cpu_cores, busy.cpu_seconds, busy.resident_bytes,
                busy.uptime_seconds) == (1.5, 12.5, 64 * MiB, 30.0)
        assert not _stats(holder, "idle").measured

        # The other replica holds no session: it asks the holder.
        assert holder.replica.address != other.replica.address
        relayed = wait_for(lambda: (s := _stats(other, "busy")).measured and s,
                           what="busy measured through the other replica")
        assert (relayed.cpu_cores, relayed.resident_bytes) == (1.5, 64 * MiB)

        snap = _once(other)
        assert [p.name for p in snap.partitions] == ["busy", "idle"]
        (node,) = [n for n in snap.nodes if n.name == "stats-a"]
        assert node.connected and node.vcpus == 4 and node.memory_bytes == 4 << 30
        assert (node.cpu_cores, node.resident_bytes, node.partitions) == (1.5, 64 * MiB, 1)
        assert (node.allocated_vcpus, node.allocated_memory_bytes) == (3, 384 * MiB)
        assert node.allocatable_vcpus >= 4 and node.allocatable_memory_bytes >= 4 << 30
        assert [p.name for p in _once(holder, node="elsewhere").partitions] == []

        # A report without the partition: it no longer runs there, nothing is shown.
        agent.outgoing.put(apb.AgentMessage(usage=apb.UsageReport()))
        wait_for(lambda: not _stats(holder, "busy").measured, what="busy unmeasured")
    finally:
        agent.close()


def test_bad_requests_get_a_code(holder: Api) -> None:
    code, msg = code_of(lambda: _stats(holder, "no-such-partition"))
    assert code == grpc.StatusCode.NOT_FOUND and "no-such-partition" in msg
    code, _ = code_of(lambda: _stats(holder, "Bad Name!"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: _once(holder, node="Bad Node!"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_sends_snapshots_until_cancelled(holder: Api) -> None:
    call = holder.stub.WatchStats(cpb.WatchStatsRequest(interval_ms=500))
    got = []
    for snap in call:
        got.append(snap)
        if len(got) == 2:
            call.cancel()
            break
    assert len(got) == 2 and got[1].time.ToNanoseconds() > got[0].time.ToNanoseconds()
