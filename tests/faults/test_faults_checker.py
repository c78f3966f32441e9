"""The checker's rules and graces on made-up snapshots and workers, with a clock turned by
hand (no cluster, no root): each rule fires when it must, and a condition that ends within
its grace, or that no scan can prove, is never counted."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
import rules
from checker import LIMIT_S, Checker
from etcd_view import Binding, EtcdUnavailable, Snapshot, prefix_end
from viridian.v1 import types_pb2 as pb
from worker_view import Worker

NODES = ["node-1", "node-2"]
RUNNING = pb.PARTITION_PHASE_RUNNING


def part(name: str, phase: int = RUNNING, vcpus: int = 1, memory: int = 16 << 20,
         node: str = "") -> pb.Partition:
    return pb.Partition(name=name, spec=pb.PartitionSpec(vcpus=vcpus, memory_bytes=memory),
                        status=pb.PartitionStatus(phase=phase, node=node))


def node(name: str, vcpus: int = 2, memory: int = 2 << 30, cpu_ratio: float = 0.0,
         mem_ratio: float = 0.0, ready: bool = True) -> pb.Node:
    state = pb.NODE_STATE_READY if ready else pb.NODE_STATE_NOT_READY
    return pb.Node(name=name, spec=pb.NodeSpec(vcpus=vcpus, memory_bytes=memory,
                                               cpu_allocation_ratio=cpu_ratio,
                                               memory_allocation_ratio=mem_ratio),
                   status=pb.NodeStatus(state=state))


@dataclass
class World:
    """What the fake etcd and the fake nodes show, changed by the test between scans."""

    revision: int = 100
    partitions: dict[str, pb.Partition] = field(default_factory=dict)
    bindings: dict[str, Binding] = field(default_factory=dict)
    nodes: dict[str, pb.Node] = field(default_factory=lambda: {n: node(n) for n in NODES})
    leases: dict[str, str] = field(default_factory=lambda: dict.fromkeys(NODES, "c1:50051"))
    workers: list[Worker] = field(default_factory=list)
    etcd_down: bool = False
    dead: set[int] = field(default_factory=set)  # pids that die between the two passes
    now: float = 1000.0

    def snapshot(self) -> Snapshot:
        if self.etcd_down:
            raise EtcdUnavailable("all members: DEADLINE_EXCEEDED")
        return Snapshot(self.revision, dict(self.partitions), dict(self.bindings),
                        dict(self.nodes), dict(self.leases), "c1-1", "fake")

    def run(self, name: str, node_name: str, epoch: int, pid: int, ha: bool = False) -> Worker:
        """Bind name to node at epoch, Running, with its worker."""
        self.partitions[name] = part(name)
        self.bindings[name] = Binding(node_name, epoch)
        w = Worker(node_name, name, pid, pid * 10, epoch)
        self.workers.append(w)
        return w


@pytest.fixture
def world() -> World:
    return World()


def checker(world: World) -> Checker:
    return Checker(world.snapshot, lambda: list(world.workers), NODES,
                   is_alive=lambda w: w.pid not in world.dead, clock=lambda: world.now)


def scan_for(ck: Checker, world: World, seconds: float, step: float = 0.15) -> None:
    end = world.now + seconds
    while world.now < end:
        ck.scan_once()
        world.now += step


def test_a_steady_cluster_breaks_no_rule(world: World) -> None:
    world.run("a", "node-1", 90, 11)
    world.run("b", "node-2", 91, 12)
    ck = checker(world)
    ck.expect("a", ha=True)
    scan_for(ck, world, 10)
    assert ck.violations() == [] and ck.last is not None and ck.last.steady


def test_a_double_counts_at_once_only_if_both_outlive_the_scan(world: World) -> None:
    world.run("a", "node-1", 90, 11)
    ck = checker(world)
    world.workers.append(Worker("node-2", "a", 22, 220, 95))
    world.dead = {22}  # gone by the second pass: the two may never have run together
    ck.scan_once()
    assert ck.counts()["double"] == 0
    world.dead = set()
    ck.scan_once()
    ck.scan_once()  # the same pair again: one incident
    assert ck.counts()["double"] == 1
    assert "node-2" in ck.violations()[0].detail


def test_an_unbound_worker_counts_after_ttl_plus_grace(world: World) -> None:
    world.run("a", "node-1", 90, 11)
    ck = checker(world)
    scan_for(ck, world, 1)
    world.bindings["a"] = Binding("node-2", 99)  # moved on; the old worker lingers
    scan_for(ck, world, LIMIT_S - 0.5)
    assert ck.counts()["unbound_worker"] == 0  # still within its grace
    world.etcd_down = True  # established: etcd is not needed to go on counting
    scan_for(ck, world, 1.0)
    assert ck.counts()["unbound_worker"] == 1
    assert "bound to node-2 at epoch 99" in ck.violations()[0].detail


def test_an_unbound_worker_that_ends_within_the_grace_is_fine(world: World) -> None:
    w = world.run("a", "node-1", 90, 11)
    ck = checker(world)
    world.bindings.pop("a")  # deleted with --force: the partition and its binding
    world.partitions.pop("a")
    scan_for(ck, world, LIMIT_S - 1)
    world.workers.remove(w)
    scan_for(ck, world, 5)
    assert ck.violations() == []


def test_a_worker_newer_than_the_snapshot_is_not_judged(world: World) -> None:
    world.workers.append(Worker("node-1", "a", 11, 110, 150))  # epoch 150 > revision 100
    ck = checker(world)
    scan_for(ck, world, 10)
    assert ck.counts()["unbound_worker"] == 0


@pytest.mark.parametrize(("spec", "cap", "over"), [
    ((9, 16 << 20), node("n", vcpus=2), "vCPUs 9 > 8"),  # ratio 0 means 4.0
    ((8, 16 << 20), node("n", vcpus=2), ""),
    ((3, 16 << 20), node("n", vcpus=2, cpu_ratio=1.0), "vCPUs 3 > 2"),
    ((1, 3 << 30), node("n", memory=2 << 30), "memory"),  # ratio 0 means 1.0: none over
    ((1, 3 << 30), node("n", memory=2 << 30, mem_ratio=2.0), ""),
], ids=["cpu-default-ratio", "cpu-full", "cpu-ratio-1", "memory", "memory-ratio-2"])
def test_overcommit_from_bindings_and_specs(spec: tuple[int, int], cap: pb.Node,
                                            over: str) -> None:
    vcpus, memory = spec
    parts = {f"p{i}": part(f"p{i}", vcpus=1, memory=memory // vcpus) for i in range(vcpus)}
    snap = Snapshot(1, parts, {n: Binding("n", 1) for n in parts}, {"n": cap}, {}, "", "")
    found = rules.overcommitted(snap)
    assert (over in found.get("n", "")) if over else found == {}


def test_a_missing_partition_counts_unless_forgotten(world: World) -> None:
    ck = checker(world)
    ck.expect("a", ha=False)
    ck.expect("b", ha=False)
    world.partitions["b"] = part("b", pb.PARTITION_PHASE_OFF)
    ck.forget("gone")
    ck.scan_once()
    assert [i.subject for i in ck.violations()] == ["a"]
    ck.forget("a")
    world.etcd_down = True
    ck.scan_once()
    assert ck.counts()["missing"] == 1 and ck.scans_failed == 1


def test_running_without_a_worker_counts_after_the_grace(world: World) -> None:
    w = world.run("a", "node-1", 90, 11)
    ck = checker(world)
    world.workers.remove(w)  # fenced; etcd still says Running
    scan_for(ck, world, LIMIT_S - 0.5)
    assert ck.counts()["running_without_worker"] == 0
    scan_for(ck, world, 1.0)
    assert ck.counts()["running_without_worker"] == 1


def test_running_without_a_worker_is_not_confirmed_while_etcd_is_unreadable(
        world: World) -> None:
    w = world.run("a", "node-1", 90, 11)
    ck = checker(world)
    world.workers.remove(w)
    ck.scan_once()
    world.etcd_down = True
    scan_for(ck, world, LIMIT_S + 2)
    assert ck.counts()["running_without_worker"] == 0  # no scan could prove it
    world.workers.append(w)  # ... and the worker is back: the incident ends
    world.etcd_down = False
    scan_for(ck, world, 1)
    assert ck.violations() == [] and ck.open_incidents() == []


def test_a_worker_at_another_epoch_is_not_the_partitions_worker(world: World) -> None:
    world.run("a", "node-1", 90, 11)
    world.bindings["a"] = Binding("node-1", 97)  # rebound; the old epoch's worker runs
    ck = checker(world)
    scan_for(ck, world, LIMIT_S + 1)
    kinds = {i.kind for i in ck.violations()}
    assert kinds == {"unbound_worker", "running_without_worker"}


def test_steady_needs_ready_nodes_with_leases_and_ha_running(world: World) -> None:
    world.run("a", "node-1", 90, 11)
    ck = checker(world)
    ck.expect("a", ha=True)
    world.leases.pop("node-2")
    assert not ck.scan_once().steady
    world.leases["node-2"] = "c2:50051"
    world.partitions["a"] = part("a", pb.PARTITION_PHASE_PENDING)
    assert "HA a PENDING" in ck.scan_once().not_steady
    world.partitions["a"] = part("a")
    assert ck.scan_once().steady


def test_after_the_faults_ha_running_and_settled_or_recorded(world: World) -> None:
    world.partitions["a"] = part("a", pb.PARTITION_PHASE_STARTING)
    ck = Checker(world.snapshot, lambda: [], NODES, interval=0.02)
    ck.expect("a", ha=True)
    ck.start()
    try:
        t = time.monotonic()
        assert not ck.check_ha_running(t, within=0.3)
        assert not ck.check_settled(t, settle=0.3)
        assert not ck.check_ha_running(time.monotonic(), within=0.2)  # counted once
        assert len(ck.violations()) == 2
        threading.Timer(0.2, lambda: world.partitions.update(a=part("a"))).start()
        t = time.monotonic()
        assert ck.check_ha_running(t, within=5) and ck.check_settled(t, settle=5)
    finally:
        ck.stop()
    assert [(i.kind, i.subject) for i in ck.violations()] == [("ha_not_running", "a"),
                                                              ("stuck", "a")]


def test_prefix_end() -> None:
    assert prefix_end(b"/viridian/nodes/") == b"/viridian/nodes0"
