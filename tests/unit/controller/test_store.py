"""The store against a real etcd: transactions with revision compares, leases, watches."""

from __future__ import annotations

import asyncio
import time

import pytest
from viridian.v1 import types_pb2 as pb

from controller.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    NotLeader,
    StoreUnavailable,
    WatchCompacted,
)
from controller.partitions.actions import view_of
from controller.partitions.machine import Placed, Reported, Start, Stop, transition
from controller.store import Allocation, EtcdStore, NodeGuard, Store, now_ts
from controller.store.etcd import Compare, Op, WatchEvent


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_txn_applies_only_when_every_compare_holds(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        key = f"{prefix}/k"
        created = await store.txn([Compare(key, 0)], [Op.put(key, b"one")])
        assert created.succeeded
        again = await store.txn([Compare(key, 0)], [Op.put(key, b"two")])
        assert not again.succeeded
        kv = await store.get(key)
        assert kv is not None and kv.value == b"one" and kv.mod_revision == created.revision
        stale = await store.txn([Compare(key, kv.mod_revision - 1)], [Op.put(key, b"x")])
        assert not stale.succeeded
        fresh = await store.txn([Compare(key, kv.mod_revision)], [Op.delete(key)])
        assert fresh.succeeded and await store.get(key) is None
        store.close()

    run(scenario())


def test_too_many_ops_are_refused_before_reaching_etcd(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        ops = [Op.put(f"{prefix}/{i}", b"x") for i in range(EtcdStore.MAX_TXN_OPS + 1)]
        with pytest.raises(ValueError, match="etcd allows 128"):
            await store.txn([], ops)
        store.close()

    run(scenario())


def test_lease_expiry_deletes_attached_key(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        lease = await store.grant_lease(1)
        await store.put(f"{prefix}/live", b"1", lease=lease)
        assert await store.keepalive(lease) > 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await store.get(f"{prefix}/live") is not None:
            assert loop.time() < deadline, "key outlived its lease"
            await asyncio.sleep(0.1)
        assert await store.keepalive(lease) == 0
        store.close()

    run(scenario())


def test_watch_delivers_puts_and_deletes_in_order(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        _, rev = await store.get_prefix(prefix + "/")
        seen: list[WatchEvent] = []
        got = asyncio.Event()

        def on_events(events: list[WatchEvent], _rev: int) -> None:
            seen.extend(events)
            if len(seen) >= 3:
                got.set()

        cancel = store.watch_prefix(prefix + "/", rev + 1, on_events, lambda _e: None)
        await store.put(f"{prefix}/a", b"1")
        await store.put(f"{prefix}/b", b"2")
        await store.delete(f"{prefix}/a")
        await asyncio.wait_for(got.wait(), 10)
        cancel()
        assert [(e.deleted, e.kv.key.rsplit("/", 1)[1]) for e in seen[:3]] == [
            (False, "a"), (False, "b"), (True, "a")]
        store.close()

    run(scenario())


def _partition(name: str) -> pb.Partition:
    return pb.Partition(
        name=name,
        spec=pb.PartitionSpec(image="img", vcpus=2, memory_bytes=64 << 20,
                              anti_affinity_group="g",
                              desired_state=pb.DESIRED_STATE_RUNNING),
        status=pb.PartitionStatus(phase=pb.PARTITION_PHASE_PENDING),
    )


def test_partitions_create_conflict_bind_release(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix, "test")
        parts = store.partitions
        await parts.create(_partition("web"), [])
        with pytest.raises(AlreadyExists, match="'web'"):
            await parts.create(_partition("web"), [])
        with pytest.raises(NotFound, match="'nope'"):
            await parts.get("nope")

        # An outcome computed from a revision that changed since is not written.
        stale = await parts.get("web")
        await parts.change("web", lambda s: transition(view_of(s), Stop(), now_ts()))
        with pytest.raises(Conflict):
            await parts.apply(stale, transition(view_of(stale), Stop(), now_ts()))

        # Bind: partition, binding and allocation in one transaction, fenced by the leader
        # key and compared on the node's record and lease key as the placement saw them.
        await parts.change("web", lambda s: transition(view_of(s), Start(), now_ts()))
        sp = await parts.get("web")
        out = transition(view_of(sp), Placed("node-1"), now_ts())
        alloc = await parts.allocation("node-1")
        with pytest.raises(NotLeader):
            await parts.bind("node-1", [(sp, out)], alloc, None)
        lease = await store.leader.grant(30)
        assert await store.leader.campaign("me", lease)
        node_rev = await store.etcd.put(store.keys.node("node-1"), b"")
        lease_rev = await store.etcd.put(store.keys.node_lease("node-1"), b"me")
        moved = NodeGuard(node_rev, lease_rev - 1)  # the node re-registered since
        assert await parts.bind("node-1", [(sp, out)], alloc, moved) is None
        rev = await parts.bind("node-1", [(sp, out)], alloc, NodeGuard(node_rev, lease_rev))
        assert rev is not None
        bound = await parts.get("web")
        assert bound.binding_node == "node-1" and bound.partition.status.epoch == rev
        assert bound.partition.status.phase == pb.PARTITION_PHASE_SCHEDULED
        alloc = await parts.allocation("node-1")
        assert (alloc.vcpus, alloc.memory_bytes) == (2, 64 << 20)

        # A second bind from the same (now stale) allocation snapshot must fail: no
        # over-commit.
        await parts.create(_partition("db"), [])
        db = await parts.get("db")
        stale_alloc = Allocation("node-1", {}, 0)
        out = transition(view_of(db), Placed("node-1"), now_ts())
        assert await parts.bind("node-1", [(db, out)], stale_alloc,
                                NodeGuard(node_rev, lease_rev)) is None

        # Stop, then the agent's report releases the binding and the allocation.
        await parts.change("web", lambda s: transition(view_of(s), Stop(), now_ts()))
        ended = Reported("node-1", pb.PARTITION_PHASE_OFF, exit_code=0)
        await parts.change("web", lambda s: transition(view_of(s), ended, now_ts()))
        after = await parts.get("web")
        assert after.binding_node == "" and after.partition.status.epoch == 0
        assert after.partition.status.phase == pb.PARTITION_PHASE_OFF
        assert (await parts.allocation("node-1")).entries == {}

        # A leader that lost its key cannot write fenced any more.
        await store.leader.revoke(lease)
        with pytest.raises(Conflict):
            await parts.change("db", lambda s: transition(view_of(s), Stop(), now_ts()),
                               fenced=True)
        store.close()

    run(scenario())


def test_paged_prefix_read_is_complete_and_pinned(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        for i in range(25):
            await store.put(f"{prefix}/p/{i:02d}", str(i).encode())
        kvs, rev = await store.get_prefix_paged(f"{prefix}/p/", page=10)
        assert [kv.value for kv in kvs] == [str(i).encode() for i in range(25)]
        await store.put(f"{prefix}/p/99", b"later")
        # Pinned to the old revision: the later key is not seen.
        again, rev2 = await store.get_prefix_paged(f"{prefix}/p/", revision=rev, page=7)
        assert rev2 == rev and len(again) == 25
        store.close()

    run(scenario())


def test_cache_reload_is_atomic_and_remembers_deletes_it_missed(
        etcd_endpoint: str, prefix: str) -> None:
    """Defect 8: deletes that happened while the watch was down were never forgotten (and a
    reload emptied the cache before filling it, so every partition looked deleted)."""

    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix, "test")
        cache = store.cache
        await store.partitions.create(_partition("kept"), [])
        await store.partitions.create(_partition("gone"), [])
        await cache.start()
        assert await cache.wait_for_revision((await store.partitions.get("gone")).mod_revision)
        seen_sizes: list[int] = []
        cache.subscribe(lambda kind, name: seen_sizes.append(len(cache.partitions)))
        cache._cancel()  # type: ignore[misc]  # the watch breaks...
        await store.etcd.delete(store.keys.partition("gone"))  # ...and misses this
        reloaded = asyncio.Event()
        cache.subscribe(lambda kind, name: reloaded.set() if kind == "" else None)
        cache._on_lost(WatchCompacted("test: the history it needs was compacted"))
        await asyncio.wait_for(reloaded.wait(), 10)
        assert set(cache.partitions) == {"kept"}
        assert "gone" in cache.deleted_partitions
        assert 0 not in seen_sizes  # nobody ever saw an empty cache
        await cache.stop()
        store.close()

    run(scenario())


def test_a_broken_cache_watch_resumes_from_its_revision_without_a_reload(
        etcd_endpoint: str, prefix: str) -> None:
    """Scale: every lost watch (a member restarted, a stall) cost a full reload of the
    whole cluster; where etcd still has the history, the watch resumes instead, and what
    happened while it was down arrives as events. A compacted history still reloads."""

    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix, "test")
        cache = store.cache
        await store.partitions.create(_partition("first"), [])
        await cache.start()
        assert cache.reloads == 1
        cache._cancel()  # type: ignore[misc]  # the watch breaks...
        await store.partitions.create(_partition("meanwhile"), [])  # ...and this happens
        cache._on_lost(StoreUnavailable("test: the member went away"))
        rev = (await store.partitions.get("meanwhile")).mod_revision
        assert await cache.wait_for_revision(rev)
        assert set(cache.partitions) == {"first", "meanwhile"}
        assert (cache.reloads, cache.resumes) == (1, 1)
        # Down again, and the history it needs compacted away: only now a reload.
        cache._cancel()  # type: ignore[misc]
        await store.partitions.create(_partition("later"), [])
        await store.partitions.create(_partition("latest"), [])
        await store.etcd.compact((await store.partitions.get("latest")).mod_revision)
        cache._on_lost(StoreUnavailable("test: the member went away"))
        deadline = asyncio.get_running_loop().time() + 10
        while cache.reloads < 2:
            assert asyncio.get_running_loop().time() < deadline, "no reload"
            await asyncio.sleep(0.05)
        assert {"later", "latest"} <= set(cache.partitions) and cache.resumes == 2
        await cache.stop()
        store.close()

    run(scenario())


def test_a_busy_event_loop_does_not_make_a_watch_look_stalled(
        etcd_endpoint: str, prefix: str) -> None:
    """A scheduling pass can hold the event loop for many seconds; the watch's stall
    detector counted that as silence from etcd and dropped a healthy watch (the placement
    bench saw 'stalled: no response for 26.6s' and reloaded its cache three times)."""

    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint], watch_stall_timeout=1.0)
        _, rev = await store.get_prefix(prefix + "/")
        got: list[WatchEvent] = []
        lost: list[Exception] = []
        cancel = store.watch_prefix(prefix + "/", rev + 1, lambda evs, _r: got.extend(evs),
                                    lost.append)
        await asyncio.sleep(0.5)
        time.sleep(3.0)  # the loop is busy (deliberately blocking it is the point here)
        await asyncio.sleep(1.0)  # ticks run again: a question is asked and answered
        await store.put(f"{prefix}/after", b"1")
        deadline = asyncio.get_running_loop().time() + 5
        while not got and not lost and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        cancel()
        store.close()
        assert lost == [] and [e.kv.key for e in got] == [f"{prefix}/after"]

    run(scenario())


def test_get_many_reads_several_keys_in_order(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        await store.put(f"{prefix}/a", b"1")
        await store.put(f"{prefix}/c", b"3")
        got = await store.get_many([f"{prefix}/c", f"{prefix}/b", f"{prefix}/a"])
        assert [kv.value if kv is not None else None for kv in got] == [b"3", None, b"1"]
        with pytest.raises(ValueError, match="etcd allows 128"):
            await store.get_many([f"{prefix}/{i}" for i in range(EtcdStore.MAX_TXN_OPS + 1)])
        store.close()

    run(scenario())


def test_registrations_share_a_transaction_and_a_conflict_falls_back_to_one_each(
        etcd_endpoint: str, prefix: str) -> None:
    """Several nodes register in one read and one transaction (one revision: every claim
    is the same). When a node's record changed between that read and the write, the batch
    is not written over it: each node is registered on its own with a fresh read, so the
    change (a cordon) is kept."""
    from controller.store.nodes import Registration

    async def scenario() -> None:
        etcd = EtcdStore([etcd_endpoint])
        store = Store(etcd, prefix, "test")
        lease = await etcd.grant_lease(30)
        spec = pb.NodeSpec(vcpus=2, memory_bytes=1 << 30, arches=[pb.ARCH_X86_64])
        batch = [Registration(f"n{i}", spec, 0) for i in range(5)]
        got = await store.nodes.register_many(batch, "replica-a", lease)
        claims = {r[0] for r in got if not isinstance(r, Exception)}
        assert len(claims) == 1 and all(r == (next(iter(claims)), True) for r in got)
        for i in range(5):
            node = await store.nodes.get(f"n{i}")
            assert node.status.state == pb.NODE_STATE_READY
            assert await store.nodes.session_holder(f"n{i}") == "replica-a"

        # n2 is cordoned between the batch's read and its write.
        real_get_many = etcd.get_many

        async def racing_get_many(keys: list[str]) -> list[object]:
            out = await real_get_many(keys)
            await store.nodes.set_cordon("n2", True)
            return out  # type: ignore[return-value]

        etcd.get_many = racing_get_many  # type: ignore[assignment,method-assign]
        again = await store.nodes.register_many(batch, "replica-b", lease)
        etcd.get_many = real_get_many  # type: ignore[method-assign]
        assert all(isinstance(r, tuple) and not r[1] for r in again)   # none is new
        assert len({r[0] for r in again if isinstance(r, tuple)}) == 5   # one txn each
        assert (await store.nodes.get("n2")).spec.cordoned   # kept over re-registration
        assert {await store.nodes.session_holder(f"n{i}") for i in range(5)} == {"replica-b"}
        etcd.close()

    run(scenario())


def test_calls_beyond_the_in_flight_bound_wait_their_turn(etcd_endpoint: str,
                                                          prefix: str) -> None:
    """However many callers, at most MAX_IN_FLIGHT calls are at etcd at once (the rest
    wait, and their deadline starts when they are sent); every one is answered."""
    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        store.MAX_IN_FLIGHT = 3
        at_etcd = peak = 0
        real = store._attempts

        async def counted(*args: object) -> object:
            nonlocal at_etcd, peak
            at_etcd += 1
            peak = max(peak, at_etcd)
            try:
                return await real(*args)  # type: ignore[arg-type]
            finally:
                at_etcd -= 1

        store._attempts = counted  # type: ignore[method-assign,assignment]
        await asyncio.gather(*(store.put(f"{prefix}/{i}", b"x") for i in range(40)))
        assert peak == 3
        assert len((await store.get_prefix(f"{prefix}/"))[0]) == 40
        store.close()

    run(scenario())


def test_events_never_reach_the_replicas_watch(etcd_endpoint: str, prefix: str) -> None:
    """Scale: every replica watched the whole prefix, events included, though no cache keeps
    them and they are most of what is written (each create, placement and report records
    some). Events live outside the watched range now; the state beside them still arrives,
    in one watch, in revision order."""

    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix, "test")
        cache = store.cache
        await cache.start()
        before = cache.watched
        for i in range(30):
            await store.events.record("Partition", f"p{i}", "Test", "a lone event")
        await store.partitions.create(_partition("with-event"), [("Created", "made", False)])
        rev = (await store.partitions.get("with-event")).mod_revision
        assert await cache.wait_for_revision(rev)
        assert "with-event" in cache.partitions
        assert cache.watched - before == 1   # the partition, not one of its 31 events
        page = await store.events.page(want=100)
        assert len(page.items) == 31
        await cache.stop()
        store.close()

    run(scenario())


def test_events_an_older_release_wrote_are_moved_out_of_the_watched_range(
        etcd_endpoint: str, prefix: str) -> None:
    """Upgrade: events written under "<prefix>/events/" by an older release are moved where
    events live now, keeping their ids and order, none lost or doubled, and then listed."""

    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix, "test")
        k = store.keys
        lease = await store.etcd.grant_lease(600)
        ids = []
        for i in range(120):   # more than one page
            key, value = store.events.build("Node", f"n{i}", "Old", f"event {i}")
            event_id = key.rsplit("/", 1)[-1]
            ids.append(event_id)
            await store.etcd.put(k.legacy_events + event_id, value, lease=lease)
        await store.events.record("Node", "n-new", "New", "written after the upgrade")
        assert await store.events.move_legacy() == 120
        assert await store.etcd.count_prefix(k.legacy_events) == 0
        listed = []
        after = ""
        while True:
            page = await store.events.page(after=after, want=50)
            listed += [ev.id for ev in page.items]
            if not page.more:
                break
            after = page.items[-1].id
        assert listed[:120] == ids and len(listed) == 121
        assert await store.events.move_legacy() == 0
        store.close()

    run(scenario())


def test_the_cache_counts_the_partitions_pinning_each_image_digest(
        etcd_endpoint: str, prefix: str) -> None:
    """The image GC asks which digests partitions pin; a scan of every partition each time
    cost 6% of a replica at 100,000 partitions. The cache keeps the count as partitions are
    created, changed and deleted, and rebuilds it on a reload."""

    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix, "test")
        cache = store.cache
        await cache.start()
        k = store.keys

        async def put(name: str, digest: str) -> int:
            p = _partition(name)
            p.spec.image_digest = digest
            return await store.etcd.put(k.partition(name), p.SerializeToString())

        await put("a", "sha256:1")
        await put("b", "sha256:1")
        await put("c", "sha256:2")
        rev = await put("d", "")
        assert await cache.wait_for_revision(rev)
        assert cache.pinned_digests() == {"sha256:1", "sha256:2"}
        rev = await put("c", "sha256:3")   # re-pinned
        assert await cache.wait_for_revision(rev)
        assert cache.pinned_digests() == {"sha256:1", "sha256:3"}
        await store.etcd.delete(k.partition("a"))
        assert await cache.wait_for_revision(await store.etcd.revision())
        assert cache.pinned_digests() == {"sha256:1", "sha256:3"}   # b still pins it
        await store.etcd.delete(k.partition("b"))
        assert await cache.wait_for_revision(await store.etcd.revision())
        assert cache.pinned_digests() == {"sha256:3"}
        assert cache.pinned_digests() == set(cache.image_users())
        await cache._load()   # a reload rebuilds the counts from scratch
        assert cache.pinned_digests() == {"sha256:3"}
        await cache.stop()
        store.close()

    run(scenario())
