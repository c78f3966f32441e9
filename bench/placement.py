"""Placement benchmark: (a) scheduler only, in process; (b) commit to etcd (hook, not wired yet).

    python bench/placement.py --nodes 5000 --partitions 100000 [--json PATH] [--etcd ENDPOINT]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
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


def commit_hook(decisions: Sequence[Decision], endpoint: str) -> int:
    """Part (b): commit the placed decisions to etcd at `endpoint`, return how many committed.

    To be wired by the store owner: one transaction per binding comparing the partition's and
    the node's mod revisions (design.md, Placement). Until then it raises NotImplementedError
    and the benchmark reports committed_per_s as null.
    """
    raise NotImplementedError("etcd commit is not wired into the placement benchmark yet")


def run_commit(decisions: Sequence[Decision], endpoint: str) -> dict[str, Any]:
    placed = [d for d in decisions if d.placed]
    started = time.perf_counter()
    try:
        committed = commit_hook(placed, endpoint)
    except NotImplementedError as exc:
        return {"committed_per_s": None, "committed_note": str(exc)}
    elapsed = time.perf_counter() - started
    return {
        "committed": committed,
        "committed_per_s": round(committed / elapsed, 1) if elapsed else None,
        "committed_note": f"etcd at {endpoint}",
    }


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
    parser.add_argument("--etcd", default=None, help="etcd endpoint for part (b)")
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
    if args.etcd:
        result.update(run_commit(decisions, args.etcd))
    else:
        result["committed_per_s"] = None
        result["committed_note"] = "scheduler only: pass --etcd ENDPOINT for part (b)"
    result["python"] = platform.python_version()
    result["cpus"] = os.cpu_count()
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
