"""Viridian's promises as pure functions of what etcd says (a Snapshot) and what runs (live
Workers). Each returns the conditions that break a rule now, keyed so that one condition
seen over many scans is one incident; checker.py adds time (graces) and counts.

    (a) double                  two live workers for one partition, on any nodes
    (b) unbound_worker          a live worker whose partition is not bound to its node at
                                its epoch (the binding key's mod revision)
    (c) overcommit              a node whose bound partitions' vCPUs or memory exceed what it
                                declared (from the bindings and the partitions' specs)
    (d) missing                 an acknowledged, never deleted partition absent from etcd
    (e) running_without_worker  a partition Running in etcd with no live worker on its node
                                at its epoch
    (f) ha_not_running          an HA partition not Running 10 s after the faults stopped
    (g) stuck                   a partition still Scheduled, Starting, Saving or Stopping
                                after the settle period
"""

from __future__ import annotations

from collections.abc import Iterable

from etcd_view import Snapshot
from viridian.v1 import types_pb2 as pb
from worker_view import Worker

__all__ = [
    "KINDS",
    "TRANSITIONAL",
    "allocatable",
    "doubles",
    "missing",
    "not_steady",
    "overcommitted",
    "phase",
    "running_without_worker",
    "transitional",
    "unbound_workers",
]

KINDS = {
    "double": "(a) two live workers for one partition",
    "unbound_worker": "(b) a live worker with no binding at its epoch > TTL + grace",
    "overcommit": "(c) a node's bound vCPUs or memory exceed its allocatable",
    "missing": "(d) an acknowledged partition missing from etcd",
    "running_without_worker": "(e) Running in etcd, no live worker on its node > TTL + grace",
    "ha_not_running": "(f) an HA partition not Running 10 s after the faults stopped",
    "stuck": "(g) a partition in a transitional phase after the settle period",
}
TRANSITIONAL = ("SCHEDULED", "STARTING", "SAVING", "STOPPING")
DEFAULT_CPU_RATIO = 4.0  # NodeSpec: 0 means 4.0
DEFAULT_MEMORY_RATIO = 1.0  # NodeSpec: 0 means 1.0


def phase(p: pb.Partition) -> str:
    return pb.PartitionPhase.Name(p.status.phase).removeprefix("PARTITION_PHASE_")


def doubles(workers: Iterable[Worker]) -> dict[str, list[Worker]]:
    """(a) partition name -> its live workers, where there are two or more."""
    by_name: dict[str, list[Worker]] = {}
    for w in workers:
        by_name.setdefault(w.name, []).append(w)
    return {n: ws for n, ws in by_name.items() if len(ws) > 1}


def unbound_workers(workers: Iterable[Worker], snap: Snapshot) -> dict[tuple[str, int, int],
                                                                         Worker]:
    """(b) (node, pid, start) -> live worker that etcd does not bind at its epoch.

    Only workers whose epoch the snapshot has reached (revision >= epoch) are judged: a
    binding whose mod revision is not the epoch now can never have it again (revisions only
    grow), so the worker stays unbound for good. A worker started after this snapshot was
    taken is not judged on it."""
    out: dict[tuple[str, int, int], Worker] = {}
    for w in workers:
        if w.epoch is None or snap.revision < w.epoch:
            continue
        b = snap.bindings.get(w.name)
        if b is None or b.node != w.node or b.revision != w.epoch:
            out[(w.node, w.pid, w.start)] = w
    return out


def allocatable(node: pb.Node) -> tuple[float, float]:
    """(vCPUs, memory bytes) the node declared it can take."""
    cpu = node.spec.cpu_allocation_ratio or DEFAULT_CPU_RATIO
    mem = node.spec.memory_allocation_ratio or DEFAULT_MEMORY_RATIO
    return node.spec.vcpus * cpu, node.spec.memory_bytes * mem


def overcommitted(snap: Snapshot) -> dict[str, str]:
    """(c) node -> what is over, summing the specs of the partitions bound to it."""
    vcpus: dict[str, int] = {}
    memory: dict[str, int] = {}
    for name, b in snap.bindings.items():
        p = snap.partitions.get(name)
        if p is None:
            continue  # a binding without its partition: nothing to size it by
        vcpus[b.node] = vcpus.get(b.node, 0) + (p.spec.vcpus or 1)
        memory[b.node] = memory.get(b.node, 0) + p.spec.memory_bytes
    out: dict[str, str] = {}
    for node_name, node in snap.nodes.items():
        cap_cpu, cap_mem = allocatable(node)
        used_cpu, used_mem = vcpus.get(node_name, 0), memory.get(node_name, 0)
        over = []
        if used_cpu > cap_cpu + 1e-9:
            over.append(f"vCPUs {used_cpu} > {cap_cpu:g}")
        if used_mem > cap_mem + 1e-9:
            over.append(f"memory {used_mem} > {cap_mem:.0f}")
        if over:
            out[node_name] = ", ".join(over)
    return out


def missing(expected: Iterable[str], snap: Snapshot) -> set[str]:
    """(d) the acknowledged partitions etcd does not have."""
    return {n for n in expected if n not in snap.partitions}


def running_without_worker(snap: Snapshot, workers: Iterable[Worker],
                           ) -> dict[tuple[str, str, int | None], str]:
    """(e) (partition, node, epoch) -> detail, for each partition Running in etcd whose node
    has no live worker for it at its epoch (any epoch if it has no binding)."""
    live: dict[tuple[str, str], list[Worker]] = {}
    for w in workers:
        live.setdefault((w.name, w.node), []).append(w)
    out: dict[tuple[str, str, int | None], str] = {}
    for name, p in snap.partitions.items():
        if p.status.phase != pb.PARTITION_PHASE_RUNNING:
            continue
        b = snap.bindings.get(name)
        node = b.node if b is not None else p.status.node
        epoch = b.revision if b is not None else None
        there = live.get((name, node), [])
        if any(epoch is None or w.epoch == epoch for w in there):
            continue
        if not node:
            detail = "Running but bound to no node"
        elif there:
            detail = (f"Running on {node} at epoch {epoch}; the worker there has epoch "
                      f"{', '.join(str(w.epoch) for w in there)}")
        else:
            detail = f"Running on {node} at epoch {epoch}; no live worker there"
        out[(name, node, epoch)] = detail
    return out


def transitional(snap: Snapshot) -> dict[str, str]:
    """(g) partition -> phase, for those between phases."""
    return {n: phase(p) for n, p in snap.partitions.items() if phase(p) in TRANSITIONAL}


def not_steady(snap: Snapshot, workers: Iterable[Worker], nodes: Iterable[str],
               ha: Iterable[str]) -> list[str]:
    """Why the cluster is not in its steady state (empty: it is): every node Ready with a
    lease, every HA partition Running with its live worker. (Open incidents count too; the
    checker adds them.)"""
    why: list[str] = []
    for n in nodes:
        node = snap.nodes.get(n)
        if node is None or node.status.state != pb.NODE_STATE_READY:
            why.append(f"node {n} not Ready")
        elif n not in snap.node_leases:
            why.append(f"node {n} has no lease")
    by_name: dict[str, list[Worker]] = {}
    for w in workers:
        by_name.setdefault(w.name, []).append(w)
    for name in ha:
        p = snap.partitions.get(name)
        b = snap.bindings.get(name)
        if p is None or p.status.phase != pb.PARTITION_PHASE_RUNNING or b is None:
            why.append(f"HA {name} {phase(p) if p else 'absent'}")
        elif not any(w.node == b.node and w.epoch == b.revision for w in by_name.get(name, [])):
            why.append(f"HA {name} has no live worker on {b.node}")
    return why

