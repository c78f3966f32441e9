"""EtcdStore against a real 3-member etcd cluster whose members die, hang or lose quorum,
and a controller replica's API through a long stop of its only (or first) etcd member.

Each test has a cluster of its own (etcd_cluster.py), faults go only to the members it
started, and every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etcd_cluster import EtcdCluster, Member, etcd_cluster
from pyetcd import etcdrpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc, controller_pb2_grpc
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.errors import StoreUnavailable
from controller.etcd_server import free_port
from controller.server import ControllerConfig, ControllerReplica
from controller.store.etcd import Compare, EtcdStore, Op, WatchEvent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RECOVERY_S = 3.0  # a fault to working calls again: the goal is ~2 s, plus a busy-box margin


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path) as c:
        yield c


def leader_first(cluster: EtcdCluster) -> list[Member]:
    """The members with the raft leader first: faulting the first listed member then also
    costs an election, the worst case for the store."""
    lead = cluster.leader()
    return [lead] + [m for m in cluster.members if m is not lead]


def follower_first(cluster: EtcdCluster) -> list[Member]:
    lead = cluster.leader()
    rest = [m for m in cluster.members if m is not lead]
    return rest + [lead]


async def until_ok(call: Callable[[], Awaitable[object]], timeout: float) -> float:
    """Seconds until call() first succeeds (StoreUnavailable = not yet)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        try:
            await call()
            return loop.time() - start
        except StoreUnavailable:
            if loop.time() - start > timeout:
                raise
            await asyncio.sleep(0.05)


async def until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not cond():
        assert loop.time() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return loop.time() - start


# -- (e) the first listed member is the one used ------------------------------------------


def test_current_endpoint_is_the_first_listed_then_the_next(cluster: EtcdCluster) -> None:
    async def scenario() -> None:
        eps = cluster.endpoints
        for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
            listed = [eps[i] for i in order]
            store = EtcdStore(listed)
            try:
                assert store.current_endpoint == listed[0]
                await store.put("/order", b"x")
                assert await store.get("/order") is not None
                lease = await store.grant_lease(5)
                assert await store.keepalive(lease) > 0
                assert store.current_endpoint == listed[0]
                assert store._keepalives.endpoint == listed[0]
            finally:
                store.close()

        # Nothing listens on the first address: the store moves to the NEXT listed member
        # (not a random one), and a read is retried there within its deadline.
        dead = f"127.0.0.1:{free_port()}"
        store = EtcdStore([dead, eps[2], eps[0], eps[1]])
        try:
            assert store.current_endpoint == dead
            assert await store.get("/order") is not None
            assert store.current_endpoint == eps[2]
        finally:
            store.close()

    asyncio.run(scenario())


# -- (a) SIGKILL and (b) SIGSTOP of the first listed member ---------------------------------


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_calls_keep_working_when_the_first_member_fails(
    cluster: EtcdCluster, fault: str
) -> None:
    members = leader_first(cluster)
    first = members[0]

    async def scenario() -> dict[str, float]:
        store = EtcdStore([m.endpoint for m in members], timeout=2.0, keepalive_timeout=1.0)
        try:
            lease = await store.grant_lease(3)
            await store.put("/live", b"1", lease=lease)
            assert await store.keepalive(lease) > 0
            assert store.keepalive_stream_opens == 1
            n = 0

            async def read() -> None:
                assert (await store.get("/live")) is not None

            async def txn() -> None:
                nonlocal n
                n += 1
                await store.txn([Compare(f"/t/{n}", 0)], [Op.put(f"/t/{n}", b"v")])

            async def keepalive() -> None:
                assert await store.keepalive(lease) > 0

            if fault == "kill":
                cluster.kill(first)
            else:
                cluster.pause(first)
            took = dict(zip(
                ("read", "txn", "keepalive"),
                await asyncio.gather(until_ok(read, 10), until_ok(txn, 10),
                                     until_ok(keepalive, 10)),
                strict=True,
            ))
            # And they keep working: every call in a row succeeds now.
            for _ in range(5):
                await read()
                await txn()
                await keepalive()
            assert store.current_endpoint != first.endpoint
            assert (await store.get("/live")) is not None, "the lease lapsed"
            return took
        finally:
            store.close()
            cluster.resume(first)

    took = asyncio.run(scenario())
    print(f"{fault} of the first listed member (the leader): recovered in "
          + ", ".join(f"{k} {v:.2f}s" for k, v in took.items()))
    assert max(took.values()) < RECOVERY_S, took


# -- (c) watches ---------------------------------------------------------------------------


class Rewatcher:
    """What controller's cache does: on_lost, watch again from the last revision seen."""

    def __init__(self, store: EtcdStore, prefix: str, revision: int) -> None:
        self.store = store
        self.prefix = prefix
        self.revision = revision
        self.events: list[WatchEvent] = []
        self.losses: list[Exception] = []
        self._cancel = store.watch_prefix(prefix, revision + 1, self._on_events, self._on_lost)

    def _on_events(self, events: list[WatchEvent], _revision: int) -> None:
        self.events.extend(events)
        self.revision = max(self.revision, events[-1].kv.mod_revision)

    def _on_lost(self, err: Exception) -> None:
        self.losses.append(err)
        self._cancel = self.store.watch_prefix(
            self.prefix, self.revision + 1, self._on_events, self._on_lost)

    def keys(self) -> list[str]:
        return [e.kv.key for e in self.events]

    def cancel(self) -> None:
        self._cancel()


def test_watch_survives_its_member_hanging(cluster: EtcdCluster) -> None:
    members = follower_first(cluster)
    first = members[0]

    async def scenario() -> float:
        store = EtcdStore([m.endpoint for m in members], watch_stall_timeout=1.0)
        writer = EtcdStore([m.endpoint for m in members[1:]])
        try:
            _, rev = await store.get_prefix("/w/")
            watch = Rewatcher(store, "/w/", rev)
            written = []
            for i in range(10):
                written.append(f"/w/{i:03d}")
                await writer.put(written[-1], b"x")
            await until(lambda: watch.keys() == written, 5, "events before the fault")

            with cluster.paused(first):
                paused_at = time.monotonic()
                for i in range(10, 40):
                    written.append(f"/w/{i:03d}")
                    await until_ok(lambda: writer.put(written[-1], b"x"), 5)
                await until(lambda: watch.keys() == written, 10, "events after the fault")
                took = time.monotonic() - paused_at
                assert len(watch.losses) == 1, watch.losses
                assert "stalled" in str(watch.losses[0])
                assert store.current_endpoint != first.endpoint
            revisions = [e.kv.mod_revision for e in watch.events]
            assert revisions == sorted(set(revisions)), "events out of order or repeated"
            watch.cancel()
            return took
        finally:
            store.close()
            writer.close()

    took = asyncio.run(scenario())
    print(f"watch re-established on another member {took:.2f}s after its member hung")
    assert took < RECOVERY_S


def test_watch_on_a_member_that_loses_quorum_is_lost(cluster: EtcdCluster) -> None:
    first, *others = cluster.members

    async def scenario() -> float:
        # Only this member, and a stall timeout too long to matter: the loss must come
        # from etcd's require-leader handling.
        store = EtcdStore([first.endpoint], watch_stall_timeout=60.0)
        try:
            _, rev = await store.get_prefix("/q/")
            events: list[WatchEvent] = []
            losses: list[Exception] = []
            store.watch_prefix("/q/", rev + 1, lambda evs, _r: events.extend(evs),
                               losses.append)
            await store.put("/q/a", b"1")
            await until(lambda: len(events) == 1, 5, "the first event")

            for m in others:
                cluster.kill(m)
            took = await until(lambda: bool(losses), 10, "the watch to be reported lost")
            assert "no leader" in str(losses[0]), losses

            # A new watch there is refused at once, and reported lost just as well.
            again: list[Exception] = []
            store.watch_prefix("/q/", rev + 1, lambda _e, _r: None, again.append)
            await until(lambda: bool(again), 5, "the second watch to be refused")
            assert "no leader" in str(again[0]), again
            assert len(losses) == 1 and len(again) == 1
            return took
        finally:
            store.close()

    took = asyncio.run(scenario())
    print(f"watch on a member without quorum reported lost after {took:.2f}s")


def test_watch_large_catch_up_idle_and_compacted(cluster: EtcdCluster) -> None:
    """A 10 MiB catch-up (over gRPC's default 4 MiB) arrives whole, an idle watch is kept
    alive by progress responses, and a compacted start revision is reported lost once
    without leaving a healthy member."""

    async def scenario() -> None:
        store = EtcdStore(cluster.endpoints, watch_stall_timeout=0.6)
        try:
            _, rev = await store.get_prefix("/big/")
            for i in range(10):
                await store.put(f"/big/{i}", bytes(1 << 20))
            got: list[WatchEvent] = []
            losses: list[Exception] = []
            store.watch_prefix("/big/", rev + 1, lambda evs, _r: got.extend(evs),
                               losses.append)
            await until(lambda: len(got) == 10, 10, "the 10 MiB catch-up")
            assert [e.kv.key for e in got] == [f"/big/{i}" for i in range(10)]

            # Idle for several stall timeouts: progress responses keep the watch.
            idle_until = asyncio.get_running_loop().time() + 5 * 0.6
            await until(lambda: asyncio.get_running_loop().time() > idle_until or bool(losses),
                        10, "the idle period")
            assert losses == []

            last = await store.put("/big/last", b"x")
            await until(lambda: len(got) == 11, 5, "an event after the idle period")
            with grpc.insecure_channel(store.current_endpoint) as channel:
                etcdrpc.KVStub(channel).Compact(
                    etcdrpc.CompactionRequest(revision=last, physical=True), timeout=5)
            compacted: list[Exception] = []
            store.watch_prefix("/big/", rev + 1, lambda _e, _r: None, compacted.append)
            await until(lambda: bool(compacted), 5, "the compacted watch to be lost")
            assert "compacted" in str(compacted[0]), compacted
            assert store.current_endpoint == cluster.endpoints[0]
            assert len(compacted) == 1 and losses == []
        finally:
            store.close()

    asyncio.run(scenario())


# -- (d) many leases on one stream ---------------------------------------------------------


def test_many_leases_share_one_keepalive_stream_across_a_member_failure(
    cluster: EtcdCluster,
) -> None:
    members = leader_first(cluster)
    first = members[0]
    count = 500

    async def scenario() -> tuple[float, float]:
        store = EtcdStore([m.endpoint for m in members])
        try:
            leases = await asyncio.gather(*(store.grant_lease(5) for _ in range(count)))
            loop = asyncio.get_running_loop()
            start = loop.time()
            ttls = await asyncio.gather(*(store.keepalive(lease) for lease in leases))
            one_round = loop.time() - start
            assert all(t > 0 for t in ttls)
            ttls = await asyncio.gather(*(store.keepalive(lease) for lease in leases))
            assert all(t > 0 for t in ttls)
            assert store.keepalive_stream_opens == 1

            cluster.kill(first)
            start = loop.time()
            alive: set[int] = set()

            def renew(lease: int) -> Callable[[], Awaitable[None]]:
                async def call() -> None:
                    ttl = await store.keepalive(lease)
                    assert ttl > 0, f"lease {lease:x} expired"
                    alive.add(lease)

                return call

            await asyncio.gather(*(until_ok(renew(lease), 10) for lease in leases))
            recovered = loop.time() - start
            assert alive == set(leases)
            # One stream before the failure, then one per endpoint switch while the others
            # elect a leader (a leaderless member refuses or stalls the stream; on a loaded
            # host the election takes longer and 20 switches were seen): a few dozen at most,
            # never one per lease or per renewal (1,500 renewals here).
            assert 2 <= store.keepalive_stream_opens <= 60, store.keepalive_stream_opens
            return one_round, recovered
        finally:
            store.close()

    one_round, recovered = asyncio.run(scenario())
    print(f"{count} keepalives on one stream: {one_round:.2f}s a round; "
          f"all renewed {recovered:.2f}s after the stream's member was killed")
    assert recovered < RECOVERY_S


# -- (f) a stopped member costs the controller's API seconds, not minutes --------------------

LEASE_TTL = 3  # the controller's default lease TTL (ControllerConfig.lease_ttl, --lease-ttl)
API_BOUND_S = LEASE_TTL + 3.0  # the TTL, plus a margin for a loaded two-core box
STOP_S = 12.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class ApiProbe:
    """A plaintext replica's public API and agent gateway: reads, and a registration
    (a transaction and a lease grant) as the write."""

    replica: ControllerReplica
    api: controller_pb2_grpc.ControllerStub
    gateway: agent_pb2_grpc.AgentGatewayStub

    async def __call__(self) -> None:
        await self.api.ListPartitions(cpb.ListPartitionsRequest(), timeout=2)
        await self.api.ListNodes(cpb.ListNodesRequest(), timeout=2)
        await self.gateway.Register(apb.RegisterRequest(node="probe", spec=pb.NodeSpec(
            vcpus=1, memory_bytes=1 << 30, arches=[pb.ARCH_X86_64])), timeout=2)

    async def answered(self) -> bool:
        try:
            await self()
        except grpc.aio.AioRpcError as err:
            if err.code() not in RETRYABLE:
                raise
            return False
        return True


@contextlib.asynccontextmanager
async def api_replica(endpoints: list[str]) -> AsyncIterator[ApiProbe]:
    config = ControllerConfig(listen="127.0.0.1:0", etcd_endpoints=endpoints,
                              prefix=f"/failover-{time.time_ns()}", lease_ttl=LEASE_TTL)
    replica = ControllerReplica(config)
    await replica.start()
    try:
        async with grpc.aio.insecure_channel(replica.address) as api, \
                grpc.aio.insecure_channel(replica.agent_address) as agents:
            yield ApiProbe(replica, controller_pb2_grpc.ControllerStub(api),
                           agent_pb2_grpc.AgentGatewayStub(agents))
    finally:
        await replica.stop()


async def until_answers(probe: ApiProbe, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await probe.answered():
        assert loop.time() - start < timeout, f"the API did not answer within {timeout:.0f}s"
        await asyncio.sleep(0.05)
    return loop.time() - start


async def probe_through_stop(probe: ApiProbe, stopped_at: float) -> list[tuple[float, bool]]:
    """Call the API over and over until the stop has lasted STOP_S: (time, answered)."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, bool]] = []
    while loop.time() - stopped_at < STOP_S:
        ok = await probe.answered()
        seen.append((loop.time() - stopped_at, ok))
        if ok:
            await asyncio.sleep(0.1)
    return seen


def test_the_api_answers_seconds_after_its_only_etcd_member_was_stopped(tmp_path: Path) -> None:
    """SIGSTOP the only member for 12 s: every call meanwhile fails (a failover candidate
    each time); after SIGCONT the API answers within the lease TTL plus a margin, reads,
    writes and leadership alike. An endpoint that failed is never set aside for long, and
    the last one never at all."""
    cluster = EtcdCluster(tmp_path, size=1)
    cluster.start()
    (member,) = cluster.members

    async def scenario() -> tuple[float, float, int]:
        async with api_replica(cluster.endpoints) as probe:
            await until(lambda: probe.replica.elector.leading, 10, "leadership")
            await probe()
            loop = asyncio.get_running_loop()
            with cluster.paused(member):
                seen = await probe_through_stop(probe, loop.time())
            failed = [t for t, ok in seen if not ok]
            assert failed and failed[-1] > STOP_S - 3, "the stop did not take effect"
            answered = await until_answers(probe, 2 * API_BOUND_S)
            leading = await until(lambda: probe.replica.elector.leading, 2 * API_BOUND_S,
                                  "leadership")
            assert probe.replica.etcd.current_endpoint == member.endpoint
            for _ in range(5):
                await probe()
            return answered, leading, len(failed)

    try:
        answered, leading, failures = asyncio.run(scenario())
    finally:
        cluster.stop()
    print(f"only member stopped {STOP_S:.0f}s ({failures} failed calls): the API answered "
          f"{answered:.2f}s after SIGCONT, the replica led again after {leading:.2f}s")
    assert answered < API_BOUND_S and leading < API_BOUND_S, (answered, leading)


def test_a_stopped_first_member_costs_the_api_seconds(cluster: EtcdCluster) -> None:
    """A 3-member cluster, the replica's first listed member (the raft leader) stopped for
    12 s: the API answers again within seconds, keeps answering while the member stays
    stopped, and after SIGCONT."""
    members = leader_first(cluster)
    first = members[0]

    async def scenario() -> tuple[float, float]:
        async with api_replica([m.endpoint for m in members]) as probe:
            await until(lambda: probe.replica.elector.leading, 10, "leadership")
            await probe()
            loop = asyncio.get_running_loop()
            with cluster.paused(first):
                seen = await probe_through_stop(probe, loop.time())
            answered = [t for t, ok in seen if ok]
            assert answered, "the API never answered while the first member was stopped"
            first_answer = answered[0]
            # Once moved on, a stopped member costs no more outages: the longest stretch
            # without an answer after the first one stays within the bound.
            gaps = [b - a for a, b in zip(answered, answered[1:], strict=False)]
            longest = max([*gaps, STOP_S - answered[-1]])
            assert probe.replica.etcd.current_endpoint != first.endpoint
            await until_answers(probe, API_BOUND_S)
            return first_answer, longest

    first_answer, longest = asyncio.run(scenario())
    print(f"first member (leader) stopped {STOP_S:.0f}s: the API answered after "
          f"{first_answer:.2f}s; longest stretch without an answer then {longest:.2f}s")
    assert first_answer < API_BOUND_S and longest < API_BOUND_S, (first_answer, longest)
