"""Node lifecycle and evictions (defect 6 and the mass-loss hold of defect 8): which silent
nodes may be evicted and when, on a hand-filled cache and an injected clock; and the
eviction transaction's compare on the node's lease, on a real etcd."""

from __future__ import annotations

import asyncio

import pytest
from viridian.v1 import types_pb2 as pb

from controller.errors import Conflict
from controller.partitions.actions import PartitionActions, view_of
from controller.partitions.eviction import HA_GRACE_S, RETURNS_SETTLE_S, NodeLifecycleLoop
from controller.partitions.machine import NodeLost, Placed, transition
from controller.store import Allocation, AllocEntry, EtcdStore, NodeGuard, Store, now_ts
from controller.store.etcd import KV


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        assert s >= 0, "time never goes backwards"
        self.t += s


def loop_with(nodes: dict[str, tuple[bool, int]]) -> tuple[NodeLifecycleLoop, Clock]:
    """A loop over a cache holding `nodes`: name -> (alive, partitions bound there)."""
    store = Store(EtcdStore(["127.0.0.1:1"]), "/never-used", "test")  # never dialled
    cache = store.cache
    for name, (alive, bound) in nodes.items():
        cache.nodes[name] = pb.Node(name=name)
        if alive:
            cache.node_leases[name] = KV(f"/x/{name}", b"", 1, 1)
        cache.allocations[name] = Allocation(
            name, {f"{name}-p{i}": AllocEntry(1, 1 << 20) for i in range(bound)}, 1)
    clock = Clock()
    loop = NodeLifecycleLoop(store, PartitionActions(store), clock=clock)
    return loop, clock


def set_alive(loop: NodeLifecycleLoop, name: str, alive: bool) -> None:
    if alive:
        loop.cache.node_leases[name] = KV(f"/x/{name}", b"", 2, 2)
    else:
        loop.cache.node_leases.pop(name, None)


def test_a_silent_node_is_evictable_only_after_its_grace() -> None:
    loop, clock = loop_with({"a": (True, 1), "b": (True, 1), "c": (False, 2)})
    assert loop.evictable() == set()
    clock.advance(HA_GRACE_S - 0.01)
    assert loop.evictable() == set()
    clock.advance(0.02)
    assert loop.evictable() == {"c"}


def test_a_new_term_of_leadership_starts_every_grace_afresh() -> None:
    """Defect 6: the silence clock survived a change of leader (a replica leading again
    evicted at the first look, with no grace)."""
    loop, clock = loop_with({"a": (True, 1), "b": (True, 1), "c": (False, 1)})
    loop.evictable()
    clock.advance(10 * HA_GRACE_S)  # long silent, as seen in an earlier term
    loop.reset_term()  # what start() does when this replica is elected again
    assert loop.evictable() == set()
    clock.advance(HA_GRACE_S)
    assert loop.evictable() == {"c"}


def test_dead_empty_nodes_never_latch_the_mass_loss_hold() -> None:
    """Defect 8: permanently dead nodes counted in the mass-loss hold; with more dead nodes
    than live ones, nothing was ever evicted again."""
    loop, clock = loop_with({"dead1": (False, 0), "dead2": (False, 0), "dead3": (False, 0),
                             "a": (True, 1), "b": (True, 1), "c": (False, 1)})
    loop.evictable()
    clock.advance(HA_GRACE_S)
    assert not loop.holding
    assert loop.evictable() == {"c"}


def test_mass_loss_holds_then_gives_a_fresh_grace() -> None:
    """More than half the nodes that matter going silent at once holds evictions; when they
    come back the still-silent ones get a fresh grace (defect 8: they were evicted with zero
    grace the moment the hold ended)."""
    loop, clock = loop_with({"a": (False, 1), "b": (False, 1), "c": (True, 1)})
    loop.evictable()
    clock.advance(5.0)
    assert loop.evictable() == set() and loop.holding
    set_alive(loop, "a", True)  # back: 2 of 3 alive
    assert loop.evictable() == set() and loop.holding  # held while nodes come back
    clock.advance(RETURNS_SETTLE_S - 0.01)
    assert loop.evictable() == set() and loop.holding
    clock.advance(0.02)   # no node back for RETURNS_SETTLE_S: the hold ends
    assert loop.evictable() == set() and not loop.holding
    clock.advance(HA_GRACE_S - 0.01)
    assert loop.evictable() == set()
    clock.advance(0.02)
    assert loop.evictable() == {"b"}


def test_the_hold_lasts_while_nodes_keep_coming_back() -> None:
    """A mass reconnect: every node went silent when its replica died, and they come back
    over tens of seconds (a busy replica books them in, admission.py). Most back is not the
    end of it: the stragglers were evicted 1 s after the hold ended, and their partitions
    ended Lost (5,000 agents, 100,000 partitions, bench/scale.py). The hold ends only once
    no node has come back for RETURNS_SETTLE_S; a node that never comes back is then
    evicted after its grace."""
    names = [f"n{i:02d}" for i in range(20)]
    loop, clock = loop_with({n: (False, 1) for n in names})
    loop.evictable()
    assert loop.holding
    for n in names[:-1]:   # one back every 2 s, each well within RETURNS_SETTLE_S
        clock.advance(2.0)
        set_alive(loop, n, True)
        assert loop.evictable() == set() and loop.holding, n
    clock.advance(RETURNS_SETTLE_S)
    assert loop.evictable() == set() and not loop.holding
    clock.advance(HA_GRACE_S)
    assert loop.evictable() == {names[-1]}


def test_an_eviction_never_lands_once_the_node_has_its_lease_again(
        etcd_endpoint: str, prefix: str) -> None:
    """Defect 6: `_evict` did not compare that the node's lease was still gone: a node that
    re-registered between the decision and the write lost its running partitions."""

    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix, "test")
        actions = PartitionActions(store)
        assert await store.leader.campaign("me", await store.leader.grant(60))
        k = store.keys
        node_rev = await store.etcd.put(k.node("n1"), pb.Node(name="n1").SerializeToString())
        lease_rev = await store.etcd.put(k.node_lease("n1"), b"replica")
        await actions.create("p", pb.PartitionSpec(image="i", vcpus=1, memory_bytes=1 << 20,
                                                   desired_state=pb.DESIRED_STATE_RUNNING),
                             pb.ARCH_X86_64)
        sp = await store.partitions.get("p")
        out = transition(view_of(sp), Placed("n1"), now_ts())
        assert await store.partitions.bind("n1", [(sp, out)], Allocation("n1"),
                                           NodeGuard(node_rev, lease_rev))
        # The node is alive (its lease key exists): the guard refuses the eviction.
        with pytest.raises(Conflict):
            await actions.apply_at("p", "n1", 0, NodeLost("n1"), fenced=True,
                                   guard=[store.nodes.lease_absent("n1")])
        assert (await store.partitions.get("p")).binding_node == "n1"
        await store.etcd.delete(k.node_lease("n1"))  # lost now
        out2 = await actions.apply_at("p", "n1", 0, NodeLost("n1"), fenced=True,
                                      guard=[store.nodes.lease_absent("n1")])
        assert out2.release and out2.partition.status.phase == pb.PARTITION_PHASE_LOST
        store.close()

    asyncio.run(scenario())


def test_silent_nodes_are_marked_not_ready_together_not_one_request_each(
        etcd_endpoint: str, prefix: str) -> None:
    """When a replica dies, every node it held goes silent at once. The new leader marked
    them NotReady one transaction after another: 5,000 nodes took it 10 s, while they were
    registering again (bench/scale.py). Concurrent marks share etcd requests (group commit);
    each is still compared on its own node's lease key being absent."""

    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix, "test")
        assert await store.leader.campaign("me", await store.leader.grant(60))
        k = store.keys
        names = [f"n{i:03d}" for i in range(300)]
        for name in names:
            await store.etcd.put(k.node(name), pb.Node(name=name).SerializeToString())
        await store.etcd.put(k.node_lease("n007"), b"replica")   # this one is alive
        await store.cache.start()
        assert await store.cache.wait_for_revision(await store.etcd.revision())
        requests: list[int] = []
        store.etcd.batch_observer = requests.append
        loop = NodeLifecycleLoop(store, PartitionActions(store))
        await loop.reconcile()
        states = {n: (await store.nodes.get(n)).status.state for n in names}
        assert states.pop("n007") != pb.NODE_STATE_NOT_READY
        assert set(states.values()) == {pb.NODE_STATE_NOT_READY}
        assert sum(requests) >= 299 and len(requests) < 100, (len(requests), sum(requests))
        store.close()

    asyncio.run(scenario())


def test_a_live_node_changing_does_not_wake_the_lifecycle_pass() -> None:
    """Every bind rewrites a live node's allocation record; each woke this O(nodes) pass,
    five times a second while 5,000 nodes filled up (14% of the replica). Only changes that
    concern silent nodes, leases or evictions wake it."""
    loop, _ = loop_with({"alive": (True, 1), "silent": (False, 1)})
    woken = loop._dirty
    woken.clear()
    loop._on_change("allocations", "alive")
    loop._on_change("nodes", "alive")
    assert not woken.is_set()
    for kind, name in (("allocations", "silent"), ("nodes", "silent"),
                       ("node-leases", "alive"), ("evictions", "alive"), ("", "")):
        woken.clear()
        loop._on_change(kind, name)
        assert woken.is_set(), (kind, name)
