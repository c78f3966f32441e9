"""The scheduling loop's work follows the change: its snapshot is rebuilt only for the nodes
that changed and stays equal to one built from the whole cache; a pass looks only at the
partitions that changed or still wait for a node."""

from __future__ import annotations

import asyncio
import random

from viridian.v1 import types_pb2 as pb

from controller.loops.scheduling import SchedulingLoop
from controller.placement import SnapshotSource, snapshot_of
from controller.scheduler import SchedulerConfig, Snapshot
from controller.store import Allocation, AllocEntry, EtcdStore, Keys, Store


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def _node(name: str, vcpus: int, memory: int, cordoned: bool = False) -> bytes:
    return pb.Node(name=name, spec=pb.NodeSpec(vcpus=vcpus, memory_bytes=memory,
                                               arches=[pb.ARCH_X86_64], cordoned=cordoned),
                   status=pb.NodeStatus(state=pb.NODE_STATE_READY)).SerializeToString()


def _same(a: Snapshot, b: Snapshot) -> None:
    assert dict(a.nodes) == dict(b.nodes)
    assert a._base.order == b._base.order
    for name in a.nodes:
        assert a.usage(name) == b.usage(name), name
    key = lambda x: x.partition  # noqa: E731
    assert sorted(a.allocations, key=key) == sorted(b.allocations, key=key)


def test_the_kept_snapshot_equals_a_full_build_through_random_changes(
        etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        etcd = EtcdStore([etcd_endpoint])
        store = Store(etcd, prefix, "test")
        keys = store.keys
        lease = await etcd.grant_lease(60)
        await store.cache.start()
        source = SnapshotSource(store.cache)
        rng = random.Random(11)
        names = [f"n{i}" for i in range(12)]
        rebuilt_before = 0
        for step in range(80):
            name = rng.choice(names)
            what = rng.randrange(6)
            if what == 0:
                rev = await etcd.put(keys.node(name), _node(
                    name, rng.choice([1, 2, 4]), rng.choice([1, 2]) << 30, rng.random() < 0.2))
            elif what == 1:
                await etcd.delete(keys.node(name))
                rev = await etcd.revision()
            elif what == 2:
                rev = await etcd.put(keys.node_lease(name), b"x", lease=lease)
            elif what == 3:
                await etcd.delete(keys.node_lease(name))
                rev = await etcd.revision()
            else:
                alloc = Allocation(name, {
                    f"p{step}-{i}": AllocEntry(rng.choice([1, 2]), 256 << 20,
                                               rng.choice(["", "g1", "g2"]))
                    for i in range(rng.randrange(0, 4))})
                rev = await etcd.put(keys.allocation(name), alloc.encode())
            assert await store.cache.wait_for_revision(rev)
            if step % 3 == 0:   # several changes between passes, as in a busy cluster
                kept = source.snapshot()
                assert source.rebuilt - rebuilt_before <= 3 or step == 0
                rebuilt_before = source.rebuilt
                _same(kept, snapshot_of(store.cache))
        source.close()
        await store.cache.stop()
        etcd.close()

    run(scenario())


def test_a_pass_looks_only_at_what_changed(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        etcd = EtcdStore([etcd_endpoint])
        store = Store(etcd, prefix, "test")
        keys = Keys(prefix)
        lease = await etcd.grant_lease(60)
        for i in range(20):
            await etcd.put(keys.node(f"n{i}"), _node(f"n{i}", 64, 64 << 30))
            await etcd.put(keys.node_lease(f"n{i}"), b"x", lease=lease)

        async def create(name: str) -> None:
            p = pb.Partition(name=name, spec=pb.PartitionSpec(
                image="x", vcpus=1, memory_bytes=64 << 20,
                desired_state=pb.DESIRED_STATE_RUNNING), status=pb.PartitionStatus(
                phase=pb.PARTITION_PHASE_PENDING, arch=pb.ARCH_X86_64))
            await etcd.put(keys.partition(name), p.SerializeToString())

        async def all_bound(count: int) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while len(store.cache.bindings) < count:
                assert loop.time() < deadline, f"{len(store.cache.bindings)} of {count} bound"
                await asyncio.sleep(0.02)

        await asyncio.gather(*(create(f"p{i:03d}") for i in range(300)))
        await store.cache.start()
        scheduler = SchedulingLoop(store, SchedulerConfig(), fenced=False)
        scheduler.start()
        await all_bound(300)
        await create("next")    # a pass after the burst: the burst's changes are now seen
        await all_bound(301)
        examined, rebuilt = scheduler.stats.examined, scheduler.snapshots.rebuilt
        await create("late")
        await all_bound(302)
        # The late one and what binding the one before changed; never the 300 already
        # bound, nor all 20 nodes again.
        assert scheduler.stats.examined - examined <= 10
        assert scheduler.snapshots.rebuilt - rebuilt <= 3
        await scheduler.stop()
        await store.cache.stop()
        etcd.close()

    run(scenario())


def test_a_followers_scheduler_keeps_no_list_of_changes(etcd_endpoint: str,
                                                        prefix: str) -> None:
    """A replica that is not the leader has its scheduling loop stopped; what changes
    meanwhile must not pile up in memory (a follower may follow for months)."""

    async def scenario() -> None:
        etcd = EtcdStore([etcd_endpoint])
        store = Store(etcd, prefix, "test")
        keys = Keys(prefix)
        await store.cache.start()
        scheduler = SchedulingLoop(store, SchedulerConfig(), fenced=False)
        source = scheduler.snapshots
        source.MAX_DIRTY = 8
        rev = 0
        for i in range(20):
            rev = await etcd.put(keys.node(f"f{i}"), _node(f"f{i}", 4, 4 << 30))
            p = pb.Partition(name=f"fp{i}", spec=pb.PartitionSpec(image="x", vcpus=1,
                                                                  memory_bytes=1 << 20))
            rev = await etcd.put(keys.partition(p.name), p.SerializeToString())
        assert await store.cache.wait_for_revision(rev)
        assert scheduler._candidates is None
        assert source._dirty is None     # past MAX_DIRTY: the next snapshot is built whole
        _same(source.snapshot(), snapshot_of(store.cache))
        await store.cache.stop()
        etcd.close()

    run(scenario())
