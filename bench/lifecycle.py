"""Partition lifecycle latency on the embedded 2-node cluster.

    python bench/lifecycle.py [--partitions 200] [--clients 8] [--json PATH]
                              [--compare-insecure]

Starts controller.embedded.Cluster (etcd, controller, 2 agents as real processes) on a tmp
data dir, pushes a static guest that exits at once, then creates N partitions with desired
state RUNNING from a few concurrent clients. One WatchPartitions stream, opened before the
first create, timestamps every phase change as it arrives. Per partition:

    create→Running  create call issued → first event with phase Running (or, when the watch
                    never showed Running because the guest ended first, the Off event of a
                    partition whose started_at is set: counted, and reported as "skipped")
    create→Off      create call issued → first event with phase Off

Goal (issue): p50 create→Running ≤ 100 ms, p99 ≤ 300 ms.

The cluster runs as `viridian up` does: TLS everywhere, tokens checked on every call.
--compare-insecure runs the same load again on a fresh --insecure cluster, right after, and
prints the ratios (the cost of TLS and authorization).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from viridian.v1 import controller_pb2 as cpb  # noqa: E402
from viridian.v1 import controller_pb2_grpc as cgrpc  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

from controller.embedded import Cluster, open_channel  # noqa: E402
from controller.etcd_server import free_port  # noqa: E402

GUEST_SRC = "int main(void) { return 0; }\n"
GOAL_P50_MS = 100.0
GOAL_P99_MS = 300.0


@dataclass
class Track:
    created: float = 0.0                 # monotonic time the create call was issued
    acked: float = 0.0                   # monotonic time the create call returned
    phases: dict[str, float] = field(default_factory=dict)  # phase -> first seen (monotonic)
    skipped_running: bool = False
    error: str = ""


def build_guest(workdir: Path) -> Path:
    src, out = workdir / "true.c", workdir / "true"
    src.write_text(GUEST_SRC)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(src)], check=True)
    return out


def push(stub: cgrpc.ControllerStub, name: str, path: Path) -> None:
    data = path.read_bytes()

    def reqs() -> Any:
        yield cpb.PushImageRequest(header=cpb.ImageHeader(name=name, format="elf",
                                                          size_bytes=len(data)))
        for i in range(0, len(data), 1 << 20):
            yield cpb.PushImageRequest(chunk=data[i:i + (1 << 20)])

    stub.PushImage(reqs(), timeout=60)


def wait_ready(stub: cgrpc.ControllerStub, nodes: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            listed = stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes
            if sum(n.status.state == pb.NODE_STATE_READY for n in listed) >= nodes:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{nodes} nodes not Ready after {timeout:.0f}s")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "max_ms": max(values),
            "mean_ms": statistics.fmean(values)}


def run(partitions: int, clients: int, prefix: str, node_vcpus: int,
        rate: float = 0.0, insecure: bool = False) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vbench-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    # Each node declares node_vcpus (x4 allocation ratio): with the host's 2 cores declared,
    # at most 16 one-vCPU partitions are bound at once and the bench measures queueing for
    # capacity, not the control plane.
    cluster = Cluster(workdir / "data", 2, address, node_vcpus=node_vcpus, insecure=insecure,
                      agent_listen=f"127.0.0.1:{free_port()}")
    tracks: dict[str, Track] = {f"{prefix}-{i:04d}": Track() for i in range(partitions)}
    lock = threading.Lock()
    done = threading.Event()
    try:
        guest = build_guest(workdir)
        cluster.start()
        channel = open_channel(address, cluster.ca_pem(), cluster.admin_token())
        stub = cgrpc.ControllerStub(channel)
        wait_ready(stub, 2)
        push(stub, "bench-true", guest)
        # Warm-up: pulls the image onto both nodes and starts the fork servers, so the figures
        # are steady-state starts rather than first-pull costs.
        for i in range(4):
            stub.CreatePartition(cpb.CreatePartitionRequest(
                name=f"{prefix}-warm-{i}",
                spec=pb.PartitionSpec(image="bench-true", placement_strategy="spread")),
                timeout=10)
        warm_deadline = time.monotonic() + 30
        while time.monotonic() < warm_deadline:
            parts = stub.ListPartitions(cpb.ListPartitionsRequest(), timeout=5).partitions
            if sum(p.status.phase == pb.PARTITION_PHASE_OFF for p in parts) >= 4:
                break
            time.sleep(0.1)

        watch = stub.WatchPartitions(cpb.WatchPartitionsRequest())

        def watcher() -> None:
            try:
                for ev in watch:
                    now = time.monotonic()
                    track = tracks.get(ev.partition.name)
                    if track is None or ev.type != cpb.PartitionWatchEvent.TYPE_PUT:
                        continue
                    status = ev.partition.status
                    phase = pb.PartitionPhase.Name(status.phase).removeprefix("PARTITION_PHASE_")
                    with lock:
                        track.phases.setdefault(phase, now)
                        if phase == "OFF" and "RUNNING" not in track.phases:
                            if status.started_at.seconds or status.started_at.nanos:
                                track.phases["RUNNING"] = now
                                track.skipped_running = True
                        if phase in ("FAILED", "LOST"):
                            track.error = status.reason
                        if all("OFF" in t.phases or t.error for t in tracks.values()):
                            done.set()
            except grpc.RpcError:
                pass

        threading.Thread(target=watcher, daemon=True).start()
        time.sleep(0.3)  # the watch stream is open before the first create

        def create(name: str) -> None:
            track = tracks[name]
            track.created = time.monotonic()
            try:
                stub.CreatePartition(cpb.CreatePartitionRequest(
                    name=name, spec=pb.PartitionSpec(
                        image="bench-true", desired_state=pb.DESIRED_STATE_RUNNING)), timeout=30)
            except grpc.RpcError as err:
                track.error = f"create: {err}"
            track.acked = time.monotonic()

        t0 = time.monotonic()
        if rate > 0:
            # Open loop at a fixed arrival rate: latency under a load the cluster sustains.
            for i, name in enumerate(tracks):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                create(name)
        else:
            # Burst: as fast as `clients` threads can call, which measures throughput.
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(create, tracks))
        created_s = time.monotonic() - t0
        finished = done.wait(120)
        total_s = time.monotonic() - t0
        watch.cancel()
        channel.close()
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def ms(t: Track, phase: str) -> float | None:
        return (t.phases[phase] - t.created) * 1000 if phase in t.phases else None

    running = [v for t in tracks.values() if (v := ms(t, "RUNNING")) is not None]
    off = [v for t in tracks.values() if (v := ms(t, "OFF")) is not None]
    ack = [(t.acked - t.created) * 1000 for t in tracks.values() if t.acked]
    scheduled = [v for t in tracks.values() if (v := ms(t, "SCHEDULED")) is not None]
    starting = [v for t in tracks.values() if (v := ms(t, "STARTING")) is not None]
    return {
        "partitions": partitions, "clients": clients, "nodes": 2, "rate": rate,
        "security": "insecure" if insecure else "tls+tokens",
        "node_vcpus": node_vcpus,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "all_finished": finished,
        "errors": sorted({t.error for t in tracks.values() if t.error})[:10],
        "error_count": sum(bool(t.error) for t in tracks.values()),
        "skipped_running": sum(t.skipped_running for t in tracks.values()),
        "create_ack": summary(ack),
        "create_to_scheduled": summary(scheduled),
        "create_to_starting": summary(starting),
        "create_to_running": summary(running),
        "create_to_off": summary(off),
        "create_calls_s": created_s,
        "total_s": total_s,
        "partitions_per_s": len(off) / total_s if total_s else 0.0,
        "goal": {"p50_running_ms": GOAL_P50_MS, "p99_running_ms": GOAL_P99_MS,
                 "met": bool(running) and percentile(running, 50) <= GOAL_P50_MS
                 and percentile(running, 99) <= GOAL_P99_MS},
    }


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"lifecycle ({result['security']}): {result['partitions']} partitions, "
                        f"{result['clients']} clients, 2 nodes, {result['machine']['cpus']} cores")
    for col in ("latency", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right" if col != "latency" else "left")
    for key in ("create_ack", "create_to_scheduled", "create_to_starting", "create_to_running",
                "create_to_off"):
        s = result[key]
        if not s.get("n"):
            table.add_row(key, "0", "-", "-", "-", "-")
            continue
        table.add_row(key, str(s["n"]), f"{s['p50_ms']:.1f}", f"{s['p90_ms']:.1f}",
                      f"{s['p99_ms']:.1f}", f"{s['max_ms']:.1f}")
    console = Console()
    console.print(table)
    console.print(f"throughput: {result['partitions_per_s']:.1f} partitions/s "
                  f"(all Off in {result['total_s']:.2f}s; create calls took "
                  f"{result['create_calls_s']:.2f}s)")
    console.print(f"Running not seen by the watch (guest ended first): "
                  f"{result['skipped_running']}; errors: {result['error_count']} "
                  f"{result['errors'][:3]}")
    goal = "MET" if result["goal"]["met"] else "MISSED"
    console.print(f"goal p50 ≤ {GOAL_P50_MS:.0f} ms, p99 ≤ {GOAL_P99_MS:.0f} ms "
                  f"create→Running: {goal}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="create at this many partitions/s (open loop, one client); "
                        "0 = burst with --clients threads")
    parser.add_argument("--node-vcpus", type=int, default=64,
                        help="vCPUs each node declares (default 64: room for the burst)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" /
                        "lifecycle.json")
    parser.add_argument("--compare-insecure", action="store_true",
                        help="also run on an --insecure cluster and print the ratios")
    args = parser.parse_args(argv)
    result = run(args.partitions, args.clients, "bench", args.node_vcpus, args.rate)
    show(result)
    results = [result]
    if args.compare_insecure:
        plain = run(args.partitions, args.clients, "bench", args.node_vcpus, args.rate,
                    insecure=True)
        show(plain)
        results.append(plain)
        result = {"tls": result, "insecure": plain, "ratios": _ratios(result, plain)}
        Console().print("TLS+tokens / insecure: " + ", ".join(
            f"{k} {v:.2f}x" for k, v in result["ratios"].items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.json}")
    return 0 if all(r["all_finished"] and not r["error_count"] for r in results) else 1


def _ratios(secure: dict[str, Any], plain: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("create_ack", "create_to_running"):
        for p in ("p50_ms", "p99_ms"):
            if plain[key].get(p):
                out[f"{key} {p}"] = secure[key][p] / plain[key][p]
    if plain["partitions_per_s"]:
        out["partitions/s"] = secure["partitions_per_s"] / plain["partitions_per_s"]
    return out


if __name__ == "__main__":
    sys.exit(main())
