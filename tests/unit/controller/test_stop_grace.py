"""Shut Down and Turn Off on the controller side: the grace a StopPartition asks for is
validated, recorded with the desired Off state (status.stop_grace_seconds, in etcd), sent
with the STOP command, sent again when shortened, and sent the same by a replica that
takes the node's session over."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from inproc import Api, FakeAgent, code_of, compile_hello, create, push, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.errors import InvalidArgument
from controller.partitions.machine import (
    DEFAULT_STOP_GRACE_S,
    CheckpointApply,
    DrainStop,
    Reported,
    Stop,
    View,
    transition,
)
from controller.validation import stop_grace

P = pb
K = apb.PartitionCommand
NOW = Timestamp(seconds=1000)
NODE = "node-1"


# -- validation -------------------------------------------------------------------------

@pytest.mark.parametrize(("grace", "force", "want"), [
    (None, False, DEFAULT_STOP_GRACE_S), (None, True, 0.0), (0.0, False, 0.0),
    (2.5, False, 2.5), (3600.0, False, 3600.0)])
def test_grace_accepted(grace: float | None, force: bool, want: float) -> None:
    assert stop_grace(grace, force) == want


def test_default_grace_is_docker_stops() -> None:
    assert DEFAULT_STOP_GRACE_S == 10.0


@pytest.mark.parametrize(("grace", "force", "needle"), [
    (-1.0, False, "between 0 and 3600"), (3600.5, False, "between 0 and 3600"),
    (math.nan, False, "nan"), (math.inf, False, "inf"), (-math.inf, False, "inf"),
    (1e300, False, "between 0 and 3600"), (5.0, True, "force"), (0.0, True, "force")])
def test_grace_refused(grace: float, force: bool, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle) as info:
        stop_grace(grace, force)
    assert "\n" not in str(info.value)


# -- the state machine records it --------------------------------------------------------

def running(phase: int = P.PARTITION_PHASE_RUNNING, grace: float = 0.0,
            desired: int = P.DESIRED_STATE_RUNNING) -> View:
    p = pb.Partition(name="p", spec=pb.PartitionSpec(
        image="img", desired_state=desired))  # type: ignore[arg-type]
    p.status.phase = phase  # type: ignore[assignment]
    p.status.stop_grace_seconds = grace
    p.status.checkpoints.append(pb.Checkpoint(name="cp", taken_in=P.PARTITION_PHASE_OFF))
    return View(p, NODE, 7)


@pytest.mark.parametrize("phase", [P.PARTITION_PHASE_SCHEDULED, P.PARTITION_PHASE_STARTING,
                                   P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED,
                                   P.PARTITION_PHASE_SAVING])
def test_stop_records_its_grace_with_desired_off(phase: int) -> None:
    out = transition(running(phase), Stop(2.5), NOW)
    p = out.partition
    assert (p.status.phase, p.spec.desired_state) == (P.PARTITION_PHASE_STOPPING,
                                                      P.DESIRED_STATE_OFF)
    assert p.status.stop_grace_seconds == 2.5 and out.write
    assert "Shut Down, grace 2.5s" in p.status.reason
    assert [(n.reason, n.message) for n in out.notes] == [
        ("StopRequested", "stop requested (Shut Down, grace 2.5s)")]
    assert "Turn Off" in transition(running(phase), Stop(0.0), NOW).notes[0].message


def test_a_stop_under_way_is_shortened_never_lengthened() -> None:
    stopping = running(P.PARTITION_PHASE_STOPPING, 30.0, P.DESIRED_STATE_OFF)
    quicker = transition(stopping, Stop(0.0), NOW).partition
    assert quicker.status.stop_grace_seconds == 0.0
    assert "Turn Off" in quicker.status.reason
    slower = transition(stopping, Stop(60.0), NOW).partition
    assert slower.status.stop_grace_seconds == 30.0
    # The controller's own stops (a drain's, a checkpoint revert's) turn off at once, and
    # a user's Shut Down on top of one does not make it slower.
    drained = transition(running(P.PARTITION_PHASE_RUNNING, 0.0), DrainStop(NODE), NOW)
    assert drained.partition.status.stop_grace_seconds == 0.0
    after = transition(View(drained.partition, NODE, 7), Stop(10.0), NOW).partition
    assert (after.status.stop_grace_seconds, after.spec.desired_state) == (
        0.0, P.DESIRED_STATE_OFF)
    reverted = transition(stopping, CheckpointApply("cp"), NOW).partition
    assert (reverted.status.phase, reverted.status.stop_grace_seconds) == (
        P.PARTITION_PHASE_STOPPING, 0.0)


def test_the_grace_is_cleared_once_it_is_off() -> None:
    stopping = running(P.PARTITION_PHASE_STOPPING, 5.0, P.DESIRED_STATE_OFF)
    off = transition(stopping, Reported(NODE, P.PARTITION_PHASE_OFF,
                                        apb.REPORT_CAUSE_STOPPED, 143), NOW).partition
    assert off.status.phase == P.PARTITION_PHASE_OFF and off.status.stop_grace_seconds == 0
    pending = running(P.PARTITION_PHASE_PENDING)
    unplaced = transition(View(pending.partition), Stop(5.0), NOW).partition
    assert unplaced.status.phase == P.PARTITION_PHASE_OFF
    assert unplaced.status.stop_grace_seconds == 0


# -- over gRPC, with a real etcd and the test playing the agent ---------------------------

@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


@pytest.fixture
def two(etcd_endpoint: str, prefix: str) -> Iterator[tuple[Api, Api]]:
    """Two replicas on one prefix: the second takes sessions over (a failover)."""
    first = replica(etcd_endpoint, prefix=prefix)
    second = replica(etcd_endpoint, prefix=prefix)
    a, b = next(first), next(second)
    try:
        yield a, b
    finally:
        for gen in (first, second):
            next(gen, None)


def stops(agent: FakeAgent, name: str) -> list[float]:
    return [c.grace_seconds for c in agent.commands(name) if c.kind == K.KIND_STOP]


def test_stop_over_grpc_validates_records_and_dispatches_the_grace(
        two: tuple[Api, Api], elf: bytes, tmp_path: Path) -> None:
    api, other = two
    push(api.stub, "hello", elf)
    agent = FakeAgent(api, NODE, vcpus=4, memory=4 << 30)
    moved: FakeAgent | None = None

    def get(name: str) -> pb.Partition:
        return api.stub.GetPartition(cpb.GetPartitionRequest(name=name))

    def run(name: str) -> None:
        create(api, name)
        wait_for(lambda: get(name).status.phase == P.PARTITION_PHASE_SCHEDULED)
        agent.report(apb.PartitionReport(name=name, epoch=get(name).status.epoch,
                                         phase=P.PARTITION_PHASE_RUNNING))
        wait_for(lambda: get(name).status.phase == P.PARTITION_PHASE_RUNNING)

    try:
        run("vm")
        for bad, needle in [(dict(grace_seconds=-1.0), "between 0 and 3600"),
                            (dict(grace_seconds=7200.0), "between 0 and 3600"),
                            (dict(grace_seconds=math.nan), "nan"),
                            (dict(grace_seconds=1.0, force=True), "force")]:
            code, msg = code_of(functools.partial(api.stub.StopPartition,
                                                  cpb.StopPartitionRequest(
                                                      name="vm", **bad)))  # type: ignore[arg-type]
            assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in msg, msg
        assert get("vm").status.phase == P.PARTITION_PHASE_RUNNING  # nothing recorded

        # Unset: the default Shut Down grace, recorded in etcd and sent with the STOP.
        out = api.stub.StopPartition(cpb.StopPartitionRequest(name="vm"))
        assert out.status.stop_grace_seconds == DEFAULT_STOP_GRACE_S
        assert other.stub.GetPartition(cpb.GetPartitionRequest(name="vm")) \
            .status.stop_grace_seconds == DEFAULT_STOP_GRACE_S  # read from etcd
        wait_for(lambda: stops(agent, "vm") == [DEFAULT_STOP_GRACE_S], what="the STOP")
        # The same request again sends nothing new; Turn Off sends STOP with grace 0.
        api.stub.StopPartition(cpb.StopPartitionRequest(name="vm"))
        api.stub.StopPartition(cpb.StopPartitionRequest(name="vm", grace_seconds=3.0))
        wait_for(lambda: stops(agent, "vm") == [DEFAULT_STOP_GRACE_S, 3.0])
        forced = api.stub.StopPartition(cpb.StopPartitionRequest(name="vm", force=True))
        assert forced.status.stop_grace_seconds == 0.0
        wait_for(lambda: stops(agent, "vm") == [DEFAULT_STOP_GRACE_S, 3.0, 0.0])

        # Another partition stops with a grace; its node's session moves to the other
        # replica, which sends the STOP again with the grace recorded in etcd.
        run("db")
        api.stub.StopPartition(cpb.StopPartitionRequest(name="db", grace_seconds=42.0))
        wait_for(lambda: stops(agent, "db") == [42.0])
        agent.close()
        moved = FakeAgent(other, NODE, vcpus=4, memory=4 << 30)
        moved.inventory = {"vm": get("vm").status.epoch, "db": get("db").status.epoch}
        wait_for(lambda: stops(moved, "db") == [42.0], what="the STOP after the failover")
        wait_for(lambda: stops(moved, "vm") == [0.0])
        moved.report(apb.PartitionReport(name="db", epoch=get("db").status.epoch,
                                         phase=P.PARTITION_PHASE_OFF,
                                         cause=apb.REPORT_CAUSE_STOPPED))
        wait_for(lambda: get("db").status.phase == P.PARTITION_PHASE_OFF)
        assert get("db").status.stop_grace_seconds == 0
        events = api.stub.ListEvents(cpb.ListEventsRequest(object="db")).events
        assert "stop requested (Shut Down, grace 42s)" in [e.message for e in events]
    finally:
        agent.close()
        if moved is not None:
            moved.close()
