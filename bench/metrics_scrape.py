"""Cost of a Prometheus scrape of a controller replica, by the number of partitions it caches.

    python bench/metrics_scrape.py [--partitions 1000,10000] [--scrapes 50] [--json PATH]

A throw-away etcd is seeded with PARTITIONS partitions (Off, so nothing schedules them, in
every phase a cluster shows) and one in-process replica serves --metrics-listen. Each scrape
is a real HTTP GET of /metrics from another thread; the collect-only figure is
generate_latest() on the replica's loop (the gauges computed from the cache), without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proto"))

from prometheus_client import generate_latest  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

from controller.etcd_server import EtcdProcess  # noqa: E402
from controller.server import ControllerConfig, ControllerReplica  # noqa: E402
from controller.store.etcd import Op  # noqa: E402

PHASES = [pb.PARTITION_PHASE_OFF, pb.PARTITION_PHASE_SAVED, pb.PARTITION_PHASE_FAILED,
          pb.PARTITION_PHASE_PAUSED]
TXN_OPS = 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def measure(endpoint: str, count: int, scrapes: int) -> dict[str, Any]:
    prefix = f"/bench-metrics-{count}-{time.time_ns()}"
    replica = ControllerReplica(ControllerConfig(
        listen="127.0.0.1:0", etcd_endpoints=[endpoint], prefix=prefix,
        metrics_listen="127.0.0.1:0"))
    keys = replica.store.keys
    ops = [Op.put(keys.partition(f"p{i:06d}"), pb.Partition(
        name=f"p{i:06d}", spec=pb.PartitionSpec(image="bench", desired_state=pb.DESIRED_STATE_OFF),
        status=pb.PartitionStatus(phase=PHASES[i % len(PHASES)])).SerializeToString())
        for i in range(count)]
    for start in range(0, len(ops), TXN_OPS):
        await replica.etcd.txn([], ops[start:start + TXN_OPS])
    await replica.start()
    try:
        assert len(replica.cache.partitions) == count, len(replica.cache.partitions)
        server = replica.metrics_server
        assert server is not None

        def get() -> tuple[float, int]:
            started = time.perf_counter()
            with urllib.request.urlopen(server.url, timeout=30) as resp:
                body = resp.read()
            return time.perf_counter() - started, len(body)

        http: list[float] = []
        size = 0
        for _ in range(scrapes):
            took, size = await asyncio.to_thread(get)
            http.append(took)
        collect: list[float] = []
        for _ in range(scrapes):
            started = time.perf_counter()
            generate_latest(replica.metrics.registry)
            collect.append(time.perf_counter() - started)
    finally:
        await replica.stop()
    return {
        "partitions": count,
        "scrapes": scrapes,
        "http_median_ms": round(statistics.median(http) * 1000, 2),
        "http_p95_ms": round(percentile(http, 0.95) * 1000, 2),
        "collect_median_ms": round(statistics.median(collect) * 1000, 2),
        "body_bytes": size,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", default="1000,10000",
                        help="comma-separated partition counts")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    counts = [int(x) for x in args.partitions.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd")
        etcd.start()
        try:
            rows = [asyncio.run(measure(etcd.endpoint, n, args.scrapes)) for n in counts]
        finally:
            etcd.stop()
    print(f"{'partitions':>10} {'scrape median':>14} {'p95':>9} {'collect only':>13} "
          f"{'body':>7}")
    for r in rows:
        print(f"{r['partitions']:>10} {r['http_median_ms']:>11.2f} ms {r['http_p95_ms']:>6.2f} ms"
              f" {r['collect_median_ms']:>10.2f} ms {r['body_bytes']:>7}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
