"""Two schedulers racing on one real etcd never over-commit a node.

Leader election normally keeps a single scheduler running; this test runs two at once on
purpose (as during a leadership hand-over with a slow old leader), each with its own cache,
and checks the invariant the binding transaction guarantees.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path

import pytest
from viridian.v1 import types_pb2 as pb

from controller.etcd_server import EtcdProcess
from controller.loops.scheduling import SchedulingLoop
from controller.scheduler import SchedulerConfig
from controller.store import Allocation, EtcdStore, Keys, Store, StoredPartition

pytestmark = pytest.mark.integration
NODES = {"n1": (2, 4 << 30), "n2": (1, 2 << 30), "n3": (1, 3 << 30)}  # vcpus, memory


async def _race(endpoint: str) -> None:
    keys = Keys("/race")
    setup = EtcdStore([endpoint])
    lease = await setup.grant_lease(120)
    for name, (vcpus, memory) in NODES.items():
        node = pb.Node(name=name, spec=pb.NodeSpec(vcpus=vcpus, memory_bytes=memory,
                                                   arches=[pb.ARCH_X86_64]),
                       status=pb.NodeStatus(state=pb.NODE_STATE_READY))
        await setup.put(keys.node(name), node.SerializeToString())
        await setup.put(keys.node_lease(name), b"test", lease=lease)
    rng = random.Random(7)
    for i in range(80):
        p = pb.Partition(
            name=f"p{i:02d}",
            spec=pb.PartitionSpec(image="x", vcpus=rng.choice([1, 1, 2, 4]),
                                  memory_bytes=rng.choice([128, 256, 512, 1024]) << 20,
                                  desired_state=pb.DESIRED_STATE_RUNNING),
            status=pb.PartitionStatus(phase=pb.PARTITION_PHASE_PENDING,
                                      arch=pb.ARCH_X86_64),
        )
        await setup.put(keys.partition(p.name), p.SerializeToString())

    stacks = []
    for who in ("a", "b"):
        etcd = EtcdStore([endpoint])
        store = Store(etcd, keys.prefix, who)
        # Unfenced on purpose: two schedulers at once, as with a slow old leader.
        loop = SchedulingLoop(store, SchedulerConfig(
            strategy="spread" if who == "a" else "binpack"), fenced=False)
        stacks.append((etcd, store.cache, loop))
    for _, cache, _ in stacks:
        await cache.start()
    for _, _, loop in stacks:
        loop.start()

    objs = Store(setup, keys.prefix, "check")
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        parts = await objs.partitions.read_all()
        undecided = [sp for sp in parts
                     if not sp.binding_node and not sp.partition.status.reason]
        if not undecided:
            break
        assert asyncio.get_running_loop().time() < deadline, f"{len(undecided)} undecided"
        await asyncio.sleep(0.1)
    for _, _, loop in stacks:
        await loop.stop()

    # One range read: partitions, bindings and allocations at a single revision (a commit
    # still in flight from a stopped loop must not land between two reads).
    kvs, _ = await setup.get_prefix(keys.prefix + "/")
    parts = [StoredPartition(pb.Partition.FromString(kv.value), kv.mod_revision)
             for kv in kvs if kv.key.startswith(keys.partitions)]
    bindings = {Keys.name_of(kv.key): kv.value.decode()
                for kv in kvs if kv.key.startswith(keys.bindings)}
    for sp in parts:
        sp.binding_node = bindings.get(sp.partition.name, "")
    allocs = {Keys.name_of(kv.key): Allocation.decode(Keys.name_of(kv.key), kv)
              for kv in kvs if kv.key.startswith(keys.allocations)}
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sp in parts:
        if sp.binding_node:
            assert sp.partition.status.phase == pb.PARTITION_PHASE_SCHEDULED
            entry = allocs[sp.binding_node].entries[sp.partition.name]
            assert (entry.vcpus, entry.memory_bytes) == (sp.partition.spec.vcpus,
                                                         sp.partition.spec.memory_bytes)
            used[sp.binding_node][0] += sp.partition.spec.vcpus
            used[sp.binding_node][1] += sp.partition.spec.memory_bytes
        else:
            assert "0/3 nodes available" in sp.partition.status.reason
    bound = {sp.partition.name for sp in parts if sp.binding_node}
    recorded = {name for a in allocs.values() for name in a.entries}
    assert bound == recorded, "allocation records and bindings disagree"
    for name, (vcpus, memory) in NODES.items():
        assert used[name][0] <= vcpus * 4, f"{name} vCPUs over-committed"
        assert used[name][1] <= memory, f"{name} memory over-committed"
    # The race was real: the cluster is full, so some partitions could not be placed.
    assert 0 < len(bound) < len(parts)
    kvs, _ = await setup.get_prefix(keys.events)
    by_source: dict[str, int] = defaultdict(int)
    for kv in kvs:
        ev = pb.Event.FromString(kv.value)
        if ev.reason == "Scheduled":
            by_source[ev.source.removeprefix("controller/")] += 1
    assert sum(by_source.values()) == len(bound)
    print("bindings committed per scheduler:", dict(by_source))
    for etcd, cache, _ in stacks:
        await cache.stop()
        etcd.close()
    setup.close()


def test_two_schedulers_never_overcommit(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    try:
        asyncio.run(_race(etcd.endpoint))
    finally:
        etcd.stop()
