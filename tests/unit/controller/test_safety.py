"""The controller's side of the safety defects, on a real etcd over real gRPC, with the test
playing the agents (tests/unit/controller/inproc.py): each test names the defect it proves
fixed. The same properties under real faults, with real agents and guests, are in
tests/faults/."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from inproc import Api, FakeAgent, code_of, compile_hello, create, get, push, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.errors import StoreUnavailable

P = pb
K = apb.PartitionCommand
OP = pb.NodeOperation


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


@pytest.fixture
def api(etcd_endpoint: str, prefix: str, elf: bytes) -> Iterator[Api]:
    """A fresh replica (and key prefix) per test: these tests lose nodes on purpose."""
    for a in replica(etcd_endpoint, prefix):
        push(a.stub, "hello", elf)
        yield a


def running(api: Api, agent: FakeAgent, name: str, **spec: object) -> pb.Partition:
    """Create `name`, let it be scheduled on `agent`'s node, report it Running."""
    create(api, name, **spec)
    wait_for(lambda: agent.assignments(name), what=f"{name} assigned to {agent.name}")
    p = get(api, name)
    agent.report(apb.PartitionReport(name=name, epoch=p.status.epoch,
                                     phase=P.PARTITION_PHASE_RUNNING))
    return wait_for(lambda: (q := get(api, name)).status.phase == P.PARTITION_PHASE_RUNNING
                    and q, what=f"{name} Running")


def node(api: Api, name: str) -> pb.Node:
    return api.stub.GetNode(cpb.GetNodeRequest(name=name))


def test_delete_force_of_a_running_partition_stops_its_copy_and_frees_capacity(
        api: Api) -> None:
    """Defect 1: the FORGET went out with epoch 0, which the agent ignores for a running
    copy: an orphan worker on an over-committed node."""
    agent = FakeAgent(api, "del-node", vcpus=1, memory=1 << 30)
    try:
        p = running(api, agent, "victim", vcpus=1)
        api.stub.DeletePartition(cpb.DeletePartitionRequest(name="victim", force=True))
        forget = wait_for(lambda: [c for c in agent.commands("victim")
                                   if c.kind == K.KIND_FORGET], what="FORGET")
        assert forget[0].epoch == p.status.epoch and forget[0].purge
        assert node(api, "del-node").status.allocated_vcpus == 0
        # The agent ignored it (a lost message): its inventory still lists the copy, and the
        # controller answers the inventory with another FORGET of that epoch.
        agent.received.clear()
        wait_for(lambda: [c for c in agent.commands("victim")
                          if c.kind == K.KIND_FORGET and c.epoch == p.status.epoch],
                 what="FORGET again from the inventory")
    finally:
        agent.close()


def test_acks_echo_their_heartbeat_and_wait_for_a_lease_renewal(api: Api) -> None:
    """Defect 2: a replica that could not renew the node's lease still acked every
    heartbeat (and acks were not matched to heartbeats)."""
    agent = FakeAgent(api, "ack-node", vcpus=1, memory=1 << 30, beat_s=3600)
    try:
        seq = agent.heartbeat()
        wait_for(lambda: seq in agent.acks(), what="ack of the heartbeat")
        assert agent.acks() == [seq]
        etcd = api.replica.store.etcd
        real = etcd.keepalive
        tried_for: list[int] = []  # the newest heartbeat read when each renewal was tried

        async def broken(lease: int) -> int:
            session = api.replica.sessions.get("ack-node")
            tried_for.append(session.beat_seq if session is not None else 0)
            raise StoreUnavailable("etcd: cut off")

        etcd.keepalive = broken  # type: ignore[method-assign]
        try:
            late = agent.heartbeat()
            again = agent.heartbeat()
            # The replica read both heartbeats and tried (and failed) to renew for them.
            wait_for(lambda: tried_for and tried_for[-1] >= again, timeout=5,
                     what="a renewal tried after both heartbeats")
            assert late not in agent.acks() and again not in agent.acks()
        finally:
            etcd.keepalive = real  # type: ignore[method-assign]
        fresh = agent.heartbeat()
        wait_for(lambda: fresh in agent.acks(), what="ack once renewals work again")
        assert late not in agent.acks()
    finally:
        agent.close()


def test_a_partition_missing_from_the_inventory_is_no_longer_running(api: Api) -> None:
    """A partition Running in etcd whose worker is gone from its node (a report lost with a
    session) must not stay Running: the heartbeat's inventory tells."""
    agent = FakeAgent(api, "inv-node", vcpus=2, memory=1 << 30)
    try:
        running(api, agent, "ghost", restart_policy=P.RESTART_POLICY_NEVER)
        agent.inventory.pop("ghost")  # the worker vanished, no report
        p = wait_for(lambda: (q := get(api, "ghost")).status.phase == P.PARTITION_PHASE_FAILED
                     and q, what="ghost Failed")
        assert "no longer runs it" in p.status.reason and not p.status.epoch
        # A worker the node runs that nothing is bound to there is told to go.
        agent.inventory["stray"] = 12345
        wait_for(lambda: [c for c in agent.commands("stray")
                          if c.kind == K.KIND_FORGET and c.epoch == 12345],
                 what="FORGET of the stray copy")
    finally:
        agent.close()


def test_an_unchanged_inventory_is_checked_again_when_its_partitions_change(
        api: Api) -> None:
    """Scale: heartbeats whose inventory was found in order are not checked again while
    nothing about the node changes; a change to a partition it runs still gets its FORGET
    at the next heartbeat."""
    agent = FakeAgent(api, "calm-node", vcpus=2, memory=1 << 30)
    try:
        p = running(api, agent, "calm")
        checker = api.replica.gateway.inventory
        before = checker.skipped
        wait_for(lambda: checker.skipped >= before + 3, what="heartbeats not checked again")
        # Deleted behind the agent's back (the FORGET that followed is dropped, as if lost):
        # the inventory stays the same, and the next heartbeat is checked all the same.
        api.stub.DeletePartition(cpb.DeletePartitionRequest(name="calm", force=True))
        wait_for(lambda: [c for c in agent.commands("calm") if c.kind == K.KIND_FORGET],
                 what="FORGET")
        agent.received.clear()
        wait_for(lambda: [c for c in agent.commands("calm")
                          if c.kind == K.KIND_FORGET and c.epoch == p.status.epoch],
                 what="FORGET again from the unchanged inventory")
    finally:
        agent.close()


def test_ha_partition_moved_once_still_fails_over(api: Api) -> None:
    """Defect 5: `move --to` and `start --node` left a permanent pin; an HA partition moved
    to a node that is later lost never failed over."""
    a = FakeAgent(api, "pin-a", vcpus=2, memory=1 << 30)
    b = FakeAgent(api, "pin-b", vcpus=2, memory=1 << 30)
    c = FakeAgent(api, "pin-c", vcpus=2, memory=1 << 30)
    try:
        create(api, "ha", ha=True, desired_state=P.DESIRED_STATE_OFF)
        api.stub.MovePartition(cpb.MovePartitionRequest(name="ha", to_node="pin-a"))
        api.stub.StartPartition(cpb.StartPartitionRequest(name="ha"))
        wait_for(lambda: a.assignments("ha"), what="ha placed on pin-a (its target)")
        p = get(api, "ha")
        assert p.status.node == "pin-a" and not p.status.target_node
        a.report(apb.PartitionReport(name="ha", epoch=p.status.epoch,
                                     phase=P.PARTITION_PHASE_RUNNING))
        wait_for(lambda: get(api, "ha").status.phase == P.PARTITION_PHASE_RUNNING)
        a.close()  # pin-a is lost: no heartbeats, its lease lapses
        moved = wait_for(lambda: (q := get(api, "ha")).status.node in ("pin-b", "pin-c")
                         and q, timeout=20, what="ha restarted on another node")
        assert moved.status.restarts == 1
        eviction = node(api, "pin-a").status.eviction
        assert eviction.state in (OP.STATE_RUNNING, OP.STATE_COMPLETED)
        wait_for(lambda: node(api, "pin-a").status.eviction.state == OP.STATE_COMPLETED,
                 what="eviction of pin-a completed")
        assert "HA" in node(api, "pin-a").status.eviction.done["ha"]
    finally:
        for agent in (a, b, c):
            agent.close()


def test_drain_goes_on_without_its_client_and_ends_failed_naming_what_could_not_move(
        api: Api) -> None:
    """Defect 7: Ctrl-C on `viridian node drain` ended the drain inside the controller too.
    The drain is now recorded; its stream only watches."""
    a = FakeAgent(api, "drain-a", vcpus=2, memory=1 << 30)
    b = FakeAgent(api, "drain-b", vcpus=1, memory=1 << 30)
    try:
        api.stub.CordonNode(cpb.CordonNodeRequest(name="drain-b"))
        first = running(api, a, "mover", vcpus=1)
        second = running(api, a, "stuck", vcpus=1, memory_bytes=900 << 20,
                         node_selector={"viridian.io/node": "drain-a"})
        api.stub.UncordonNode(cpb.CordonNodeRequest(name="drain-b"))
        stream = api.stub.DrainNode(cpb.DrainNodeRequest(name="drain-a", deadline_seconds=8))
        got = next(iter(stream))
        assert got.drain.state == OP.STATE_RUNNING and set(got.drain.pending) == {
            "mover", "stuck"}
        stream.cancel()  # the client goes away

        # The leader saves both (Quick Migration); play the agent.
        for p in (first, second):
            wait_for(lambda p=p: K.KIND_SAVE in [c.kind for c in a.commands(p.name)],
                     what=f"SAVE of {p.name}")
            state = pb.StateRef(node="drain-a", digest="sha256:" + "cd" * 32, size_bytes=1)
            a.report(apb.PartitionReport(name=p.name, epoch=p.status.epoch,
                                         phase=P.PARTITION_PHASE_SAVED, state=state))
        # mover fits on drain-b and is restored there; stuck selects drain-a only.
        wait_for(lambda: b.assignments("mover"), what="mover restored on drain-b")
        restore = b.assignments("mover")[0]
        assert restore.restore.digest == "sha256:" + "cd" * 32
        b.report(apb.PartitionReport(name="mover", epoch=restore.epoch,
                                     phase=P.PARTITION_PHASE_RUNNING))
        op = wait_for(lambda: (d := node(api, "drain-a").status.drain).state
                      == OP.STATE_FAILED and d, timeout=20, what="drain failed at its deadline")
        assert op.done["mover"] == "restored on node drain-b"
        assert "stuck" in op.failed and "stuck" not in op.done
        assert node(api, "drain-a").spec.cordoned
        # Uncordon: placements there again (and nothing left running to cancel).
        api.stub.UncordonNode(cpb.CordonNodeRequest(name="drain-a"))
        wait_for(lambda: a.assignments("stuck")[1:], what="stuck placed back on drain-a")
    finally:
        a.close()
        b.close()


def test_node_rm_refuses_live_nodes_and_evicts_only_when_forced(api: Api) -> None:
    """Defect 8 (the mass-loss hold counted permanently dead nodes and there was no way to
    remove one): `viridian node rm`."""
    agent = FakeAgent(api, "rm-node", vcpus=2, memory=1 << 30)
    try:
        running(api, agent, "left", vcpus=1)
        code, msg = code_of(lambda: api.stub.RemoveNode(cpb.RemoveNodeRequest(
            name="rm-node", force=True)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "alive" in msg
        agent.beating = False
        wait_for(lambda: node(api, "rm-node").status.state == P.NODE_STATE_NOT_READY,
                 what="rm-node NotReady")
        # (It may already have been evicted by the leader after its grace: either way the
        # node is removed only when nothing is bound to it or --force says so.)
        if node(api, "rm-node").status.allocated_vcpus:
            def refusal() -> tuple[grpc.StatusCode, str]:
                return code_of(lambda: api.stub.RemoveNode(cpb.RemoveNodeRequest(
                    name="rm-node")))

            # NotReady shows as soon as the lease is gone; the leader records it a moment
            # later, and until then removal says to try again.
            wait_for(lambda: "not marked NotReady yet" not in refusal()[1],
                     what="rm-node recorded NotReady")
            code, msg = refusal()
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "left" in msg
        api.stub.RemoveNode(cpb.RemoveNodeRequest(name="rm-node", force=True))
        code, _ = code_of(lambda: node(api, "rm-node"))
        assert code == grpc.StatusCode.NOT_FOUND
        assert get(api, "left").status.phase == P.PARTITION_PHASE_LOST
        assert "rm-node" not in [n.name for n in api.stub.ListNodes(
            cpb.ListNodesRequest()).nodes]
    finally:
        agent.close()


def test_a_new_leader_resumes_a_drain(etcd_endpoint: str, prefix: str, elf: bytes) -> None:
    """Drains are recorded operations: when the leader carrying one out goes away, the next
    leader picks it up where it was."""
    gen_a = replica(etcd_endpoint, prefix)
    first = next(gen_a)  # leads: it started first
    wait_for(lambda: first.replica.elector.leading, what="the first replica leading")
    gen_b = replica(etcd_endpoint, prefix)
    second = next(gen_b)
    push(second.stub, "hello", elf)
    a = FakeAgent(second, "lead-a", vcpus=2, memory=1 << 30)  # sessions on the standby
    b = FakeAgent(second, "lead-b", vcpus=2, memory=1 << 30)
    try:
        second.stub.CordonNode(cpb.CordonNodeRequest(name="lead-b"))
        p = running(second, a, "mover")
        second.stub.UncordonNode(cpb.CordonNodeRequest(name="lead-b"))
        stream = second.stub.DrainNode(cpb.DrainNodeRequest(name="lead-a"))
        next(iter(stream))
        stream.cancel()
        wait_for(lambda: K.KIND_SAVE in [c.kind for c in a.commands("mover")],
                 what="SAVE sent by the first leader's drain step")
        for _ in gen_a:  # the leader stops (its lease is revoked): the standby takes over
            pass
        wait_for(lambda: second.replica.elector.leading, what="the standby leading")
        state = pb.StateRef(node="lead-a", digest="sha256:" + "ef" * 32, size_bytes=1)
        a.report(apb.PartitionReport(name="mover", epoch=p.status.epoch,
                                     phase=P.PARTITION_PHASE_SAVED, state=state))
        restore = wait_for(lambda: b.assignments("mover"), what="restored on lead-b")[0]
        b.report(apb.PartitionReport(name="mover", epoch=restore.epoch,
                                     phase=P.PARTITION_PHASE_RUNNING))
        op = wait_for(lambda: (d := node(second, "lead-a").status.drain).state
                      == OP.STATE_COMPLETED and d, what="drain completed by the new leader")
        assert op.done["mover"] == "restored on node lead-b"
    finally:
        a.close()
        b.close()
        for _ in gen_b:
            pass
