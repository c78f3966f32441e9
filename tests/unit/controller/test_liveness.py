"""Node liveness on one lease per replica (controller/gateway/liveness.py), on a real etcd
over real gRPC, with the test playing the agents (inproc.FakeAgent)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from inproc import Api, FakeAgent, code_of, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.gateway.admission import RETRY_AFTER_KEY, SetupAdmission
from controller.gateway.timings import Timings

TTL = 2


@pytest.fixture
def api(etcd_endpoint: str, prefix: str) -> Iterator[Api]:
    yield from replica(etcd_endpoint, prefix, lease_ttl=TTL)


def state(api: Api, node: str) -> int:
    return api.stub.GetNode(cpb.GetNodeRequest(name=node)).status.state


def lease_of(api: Api, node: str) -> int:
    kv = api.replica.store.cache.node_leases.get(node)
    return kv.lease if kv is not None else 0


def test_every_node_of_a_replica_hangs_on_its_one_lease(api: Api) -> None:
    agents = [FakeAgent(api, f"one-{i}", vcpus=1, memory=1 << 30) for i in range(5)]
    try:
        for agent in agents:
            wait_for(lambda a=agent: a.acks(), what=f"an ack for {agent.name}")  # type: ignore[misc]
        leases = {lease_of(api, a.name) for a in agents}
        assert len(leases) == 1 and 0 not in leases
        renewals = api.replica.gateway.liveness.renewals
        acks = sum(len(a.acks()) for a in agents)
        assert 0 < renewals <= acks   # a renewal answers every heartbeat that came before it
    finally:
        for agent in agents:
            agent.close()


def test_a_node_whose_stream_ended_is_lost_only_after_a_silent_ttl(api: Api) -> None:
    """Its agent fences at its last acked heartbeat + TTL - margin: the key must outlive
    that (as a lease of its own would have), then go."""
    agent = FakeAgent(api, "gone", vcpus=1, memory=1 << 30)
    wait_for(lambda: agent.acks(), what="an ack")
    agent.close()
    closed = time.monotonic()
    wait_for(lambda: state(api, "gone") == pb.NODE_STATE_NOT_READY, timeout=4 * TTL,
             what="the node NotReady")
    # The last heartbeat left at most a beat interval (TTL/6) before the close.
    assert time.monotonic() - closed >= TTL - TTL / 6


@pytest.fixture
def pair(etcd_endpoint: str, prefix: str) -> Iterator[tuple[Api, Api]]:
    """Two replicas on one prefix."""
    first, second = replica(etcd_endpoint, prefix, TTL), replica(etcd_endpoint, prefix, TTL)
    a, b = next(first), next(second)
    try:
        yield a, b
    finally:
        for gen in (second, first):
            next(gen, None)


def test_a_stale_session_never_deletes_the_key_of_a_newer_registration(
        pair: tuple[Api, Api]) -> None:
    a, b = pair
    first = FakeAgent(a, "mover", vcpus=1, memory=1 << 30)
    second: FakeAgent | None = None
    try:
        wait_for(lambda: first.acks(), what="a session on replica A")
        stale = a.replica.sessions.get("mover")
        assert stale is not None
        second = FakeAgent(b, "mover", vcpus=1, memory=1 << 30)  # the agent moved to B
        moved = second
        wait_for(lambda: moved.acks(), what="a session on replica B")
        wait_for(lambda: a.replica.sessions.get("mover") is None,
                 what="replica A ending its superseded session")
        # A releases the key of its old claim: compared, it deletes nothing.
        assert a.run(a.replica.store.nodes.release("mover", stale.claim)) is False
        b_lease = b.run(b.replica.gateway.liveness.lease())
        wait_for(lambda: lease_of(b, "mover") == b_lease, what="the key on B's lease")
        assert state(b, "mover") == pb.NODE_STATE_READY
    finally:
        first.close()
        if second is not None:
            second.close()


def test_a_registration_that_cannot_start_before_its_deadline_is_refused_at_once(
        api: Api) -> None:
    """A mass reconnect: registrations beyond what the replica works on at once wait only
    until just before their caller's deadline, then get UNAVAILABLE (the agent backs off or
    tries another replica) instead of etcd work done for callers that gave up."""
    gateway = api.replica.gateway
    gateway.registrar._slots = asyncio.Semaphore(0)   # every batch slot taken
    request = apb.RegisterRequest(node="queued", spec=pb.NodeSpec(
        vcpus=1, memory_bytes=1 << 30, arches=[pb.ARCH_X86_64]))
    started = time.monotonic()
    code, details = code_of(lambda: api.gateway.Register(request, timeout=1.0))
    assert code == grpc.StatusCode.UNAVAILABLE and "busy registering" in details
    assert time.monotonic() - started < 1.0
    assert api.replica.store.cache.nodes.get("queued") is None   # nothing written


def test_the_pace_slows_with_the_sessions_held_and_keeps_to_the_ttl() -> None:
    """TTL/6 apart while the heartbeats stay under the budget; then as far apart as the
    budget asks, never past TTL/2; the ack timeout always leaves the agent time to move
    before it fences (interval + ack timeout <= TTL - margin)."""
    t = Timings(3, max_beats_per_s=2000)
    assert t.pace(1) == (0.5, 1.0)
    assert t.pace(1000) == (0.5, 1.0)
    assert t.pace(2000) == (1.0, 1.5)
    assert t.pace(5000) == (1.5, 1.0)
    for ttl in (1, 2, 3, 10, 60):
        timings = Timings(ttl, max_beats_per_s=50)
        paces = [timings.pace(n) for n in (0, 1, 10, 100, 1000, 10_000, 10**6)]
        assert [p[0] for p in paces] == sorted(p[0] for p in paces)   # slower with more
        for interval, ack_timeout in paces:
            assert timings.heartbeat_s <= interval <= max(ttl / 2, timings.heartbeat_s)
            assert interval + ack_timeout <= ttl - timings.fence_margin_s + 1e-9
            assert 0.1 <= ack_timeout <= 2 * interval


def test_a_busy_replica_asks_its_agents_for_fewer_heartbeats(etcd_endpoint: str,
                                                              prefix: str) -> None:
    """Over its heartbeat budget (here 2 a second), a replica's Register replies and acks
    carry the slower pace for the sessions it holds."""
    for api in replica(etcd_endpoint, prefix, lease_ttl=TTL, max_heartbeats_per_s=2.0):
        agents: list[FakeAgent] = []
        try:
            first = FakeAgent(api, "paced-0", vcpus=1, memory=1 << 30)
            agents.append(first)
            assert first.reply.heartbeat_interval_ms == 500   # 1 session at 2 a second
            agents += [FakeAgent(api, f"paced-{i}", vcpus=1, memory=1 << 30)
                       for i in range(1, 5)]
            # 5 sessions at 2 beats a second: 2.5 s apart, capped at TTL/2 = 1 s; the ack
            # timeout is what is left before the fence: 2 - 1/3 - 1 s
            assert agents[-1].reply.heartbeat_interval_ms == 1000
            assert agents[-1].reply.ack_timeout_ms == 667

            def paced_ack(agent: FakeAgent = first) -> bool:
                return any(m.HasField("ack") and m.ack.heartbeat_interval_ms == 1000
                           and m.ack.ack_timeout_ms == 667 for m in list(agent.received))

            wait_for(paced_ack, what="an ack to the first agent with the slower pace")
        finally:
            for agent in agents:
                agent.close()


def test_the_pace_counts_the_agents_booked_to_come_back(etcd_endpoint: str,
                                                        prefix: str) -> None:
    """A mass reconnect: the first agents back are told the pace for all those refused and
    booked to come back, not the fastest pace of a replica holding a handful of sessions
    (they beat three times as often as needed while the rest arrived)."""
    for api in replica(etcd_endpoint, prefix, lease_ttl=TTL, max_heartbeats_per_s=2.0):
        gateway = api.replica.gateway
        gateway.admission.limit = 1
        spec = pb.NodeSpec(vcpus=1, memory_bytes=1 << 30, arches=[pb.ARCH_X86_64])
        holder: apb.RegisterResponse = api.gateway.Register(
            apb.RegisterRequest(node="holder", spec=spec), timeout=5.0)
        assert holder.heartbeat_interval_ms == 500   # 1 node at 2 beats a second
        for i in range(10):   # refused, and booked to come back
            with pytest.raises(grpc.RpcError):
                api.gateway.Register(apb.RegisterRequest(node=f"later-{i}", spec=spec),
                                     timeout=5.0)
        gateway.admission.limit = 2
        reply: apb.RegisterResponse = api.gateway.Register(
            apb.RegisterRequest(node="early", spec=spec), timeout=5.0)
        assert reply.heartbeat_interval_ms == 1000   # paced for ~12 nodes: TTL/2 at most


def test_registrations_arriving_together_share_transactions(api: Api) -> None:
    """A burst of Registers (a mass reconnect) is written in shared transactions, not one
    each, and every node is Ready with its lease key on this replica."""
    gateway = api.replica.gateway
    before = (gateway.registrar.batches, gateway.registrar.registered)
    spec = pb.NodeSpec(vcpus=1, memory_bytes=1 << 30, arches=[pb.ARCH_X86_64])
    calls = [api.gateway.Register.future(apb.RegisterRequest(node=f"burst-{i}", spec=spec),
                                         timeout=10.0) for i in range(40)]
    assert all(c.result().session_id for c in calls)
    batches = gateway.registrar.batches - before[0]
    assert gateway.registrar.registered - before[1] == 40
    assert batches < 40, f"{batches} transactions for 40 registrations"
    for i in range(40):
        wait_for(lambda i=i: api.replica.store.cache.nodes.get(f"burst-{i}") is not None,
                 what=f"burst-{i} in the cache")
        node = api.replica.store.cache.nodes[f"burst-{i}"]
        assert node.status.state == pb.NODE_STATE_READY
        assert api.run(api.replica.store.nodes.session_holder(f"burst-{i}")) == \
            gateway.advertise


def test_heartbeats_are_acked_while_a_report_is_still_being_applied(api: Api) -> None:
    """Applying a report is an etcd transaction; a slow one (a busy etcd, or 80 re-adopted
    reports after a reconnect) must not hold back the acks of the heartbeats sent after
    it, or the agent gives the session up and registers again, over and over. The report
    is still applied, and before the inventory of any heartbeat that followed it."""
    gateway = api.replica.gateway
    real_apply = gateway.reports.apply
    order: list[str] = []

    async def slow_apply(node: str, report: apb.PartitionReport, session: object) -> None:
        await asyncio.sleep(3.0)
        order.append("report")

    real_check = gateway.inventory.check

    async def noted_check(session: object, inventory: object) -> None:
        order.append("inventory")
        await real_check(session, inventory)  # type: ignore[arg-type]

    gateway.reports.apply = slow_apply  # type: ignore[method-assign,assignment]
    gateway.inventory.check = noted_check  # type: ignore[method-assign,assignment]
    agent = None
    try:
        agent = FakeAgent(api, "slowpoke", vcpus=1, memory=1 << 30, beat_s=0.2)
        agent.outgoing.put(apb.AgentMessage(report=apb.PartitionReport(
            name="nothing-here", epoch=1, phase=pb.PARTITION_PHASE_OFF)))
        sent = time.monotonic()
        wait_for(lambda: len(agent.acks()) >= 3, what="acks during the slow report",
                 timeout=2.5)
        assert time.monotonic() - sent < 2.5 and order == []   # still applying it
        wait_for(lambda: "report" in order, what="the report applied", timeout=10)
        wait_for(lambda: "inventory" in order, what="a heartbeat's inventory checked")
        assert order[0] == "report"   # heartbeats sent after it waited for it
    finally:
        gateway.reports.apply = real_apply  # type: ignore[method-assign]
        gateway.inventory.check = real_check  # type: ignore[method-assign]
        if agent is not None:
            agent.close()


def test_registrations_beyond_the_sessions_being_set_up_are_refused_with_a_retry_hint(
        api: Api) -> None:
    """Admission (gateway/admission.py): while `limit` nodes are registered but have not
    sent a heartbeat yet, another node's Register is refused at once, before any etcd work,
    with the time to come back; the same node registering again is let in; a first
    heartbeat frees the slot."""
    gateway = api.replica.gateway
    gateway.admission.limit = 2
    spec = pb.NodeSpec(vcpus=1, memory_bytes=1 << 30, arches=[pb.ARCH_X86_64])

    def register(name: str) -> apb.RegisterResponse:
        reply: apb.RegisterResponse = api.gateway.Register(
            apb.RegisterRequest(node=name, spec=spec), timeout=5.0)
        return reply

    register("adm-1")
    register("adm-2")
    with pytest.raises(grpc.RpcError) as info:
        register("adm-3")
    err: Any = info.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "setting up 2" in err.details()
    hint = dict(err.trailing_metadata())[RETRY_AFTER_KEY]
    assert SetupAdmission.MIN_WAIT_S * 1000 <= int(hint) <= SetupAdmission.MAX_WAIT_S * 1000
    assert api.replica.store.cache.nodes.get("adm-3") is None   # nothing written
    register("adm-2")   # its agent retrying: admitted
    agent = FakeAgent(api, "adm-1", vcpus=1, memory=1 << 30)   # registers, heartbeats
    try:
        wait_for(lambda: bool(agent.acks()), what="adm-1 acked")
        assert register("adm-3").session_id   # adm-1's slot was freed by its heartbeat
    finally:
        agent.close()
