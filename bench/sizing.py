"""What N partitions cost the control plane: controller and etcd memory, etcd's database.

    python bench/sizing.py [--steps 0,1000,5000,10000] [--clients 8] [--json PATH]

Starts controller.embedded.Cluster (etcd, a controller, 2 agents as real processes, TLS as
`viridian up` runs it), pushes a tiny static guest, then creates partitions with desired
state Off (records only: nothing is placed and no worker runs, so this is the cost of the
partitions' records, their Created events and the controller's cache of them) up to each
step. At each step, once ListPartitions returns all of them, it records:

    controller RSS   VmRSS of the controller process (/proc/PID/status)
    etcd RSS         VmRSS of the etcd process
    agent RSS        VmRSS of each agent (they hold nothing per Off partition: a control)
    etcd dbSize      `etcdctl endpoint status`: the file's size, and dbSizeInUse
    creates/s        the step's creates over its wall time, from --clients threads

Events: each create writes a Created event (kept an hour, at most --max-events, 10,000),
so from 10,000 partitions on, the events' share of etcd stops growing.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from viridian.v1 import controller_pb2 as cpb  # noqa: E402
from viridian.v1 import controller_pb2_grpc as cgrpc  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

from controller.embedded import Cluster, open_channel  # noqa: E402
from controller.etcd_server import etcd_binary, free_port  # noqa: E402

GUEST_SRC = "int main(void) { return 0; }\n"
MIB = 1 << 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


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
        for i in range(0, len(data), MIB):
            yield cpb.PushImageRequest(chunk=data[i:i + MIB])

    stub.PushImage(reqs(), timeout=60)


def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not true after {timeout:.0f}s")


def count_partitions(stub: cgrpc.ControllerStub) -> int:
    total, token = 0, ""
    while True:
        page = stub.ListPartitions(cpb.ListPartitionsRequest(page_size=5000, page_token=token),
                                   timeout=30)
        total += len(page.partitions)
        token = page.next_page_token
        if not token:
            return total


def etcd_status(cluster: Cluster) -> dict[str, int]:
    assert cluster.etcd is not None
    tls = cluster.data_dir / "pki" / "etcd-embedded"
    out = subprocess.run(
        [str(etcd_binary().parent / "etcdctl"), f"--endpoints={cluster.etcd.endpoint}",
         "--cacert", str(tls / "ca.pem"), "--cert", str(tls / "cert.pem"),
         "--key", str(tls / "key.pem"), "endpoint", "status", "-w", "json"],
        check=True, capture_output=True, text=True, timeout=30).stdout
    status = json.loads(out)[0]["Status"]
    return {"db_size": int(status["dbSize"]), "db_size_in_use": int(status["dbSizeInUse"])}


def measure(cluster: Cluster) -> dict[str, Any]:
    assert cluster.controller is not None and cluster.etcd is not None
    assert cluster.etcd.proc is not None
    return {
        "controller_rss": rss_bytes(cluster.controller.pid),
        "etcd_rss": rss_bytes(cluster.etcd.proc.pid),
        "agent_rss": [rss_bytes(p.pid) for p in cluster.agents.values()],
        **etcd_status(cluster),
    }


def run(steps: list[int], clients: int) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="vsizing-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    cluster = Cluster(workdir / "data", 2, address, node_vcpus=64,
                      agent_listen=f"127.0.0.1:{free_port()}")
    rows: list[dict[str, Any]] = []
    try:
        guest = build_guest(workdir)
        cluster.start()
        channel = open_channel(address, cluster.ca_pem(), cluster.admin_token())
        stub = cgrpc.ControllerStub(channel)
        wait_for("2 nodes Ready", lambda: sum(
            n.status.state == pb.NODE_STATE_READY
            for n in stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes) >= 2, 30)
        push(stub, "bench-true", guest)

        def create(i: int) -> None:
            stub.CreatePartition(cpb.CreatePartitionRequest(
                name=f"size-{i:06d}", spec=pb.PartitionSpec(
                    image="bench-true", desired_state=pb.DESIRED_STATE_OFF,
                    labels={"bench": "sizing", "index": str(i)})), timeout=60)

        have = 0
        for step in steps:
            t0 = time.monotonic()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(create, range(have, step)))
            wall = time.monotonic() - t0
            made = step - have
            have = step
            wait_for(f"{step} partitions listed",
                     lambda n=step: count_partitions(stub) >= n, 120)
            row = {"partitions": step, **measure(cluster),
                   "creates_per_s": round(made / wall, 1) if made else None}
            rows.append(row)
            print(f"{step:>7} partitions: controller {row['controller_rss'] / MIB:.1f} MiB, "
                  f"etcd db {row['db_size'] / MIB:.1f} MiB", flush=True)
        channel.close()
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def per_partition(rows: list[dict[str, Any]], key: str) -> float | None:
    """Growth of `key` per partition between the first and the last step."""
    first, last = rows[0], rows[-1]
    n = last["partitions"] - first["partitions"]
    return (last[key] - first[key]) / n if n else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="0,1000,5000,10000",
                        help="partition counts to measure at, ascending")
    parser.add_argument("--clients", type=int, default=8, help="concurrent create threads")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    if not steps or steps != sorted(steps) or steps[0] < 0:
        parser.error("--steps: ascending counts, e.g. 0,1000,5000")
    rows = run(steps, args.clients)

    table = Table(title="Control-plane cost of N partitions (desired Off: records only)")
    for col in ("partitions", "controller RSS", "etcd RSS", "agent RSS (each)",
                "etcd dbSize", "dbSizeInUse", "creates/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["partitions"]), f"{r['controller_rss'] / MIB:.1f} MiB",
                      f"{r['etcd_rss'] / MIB:.1f} MiB",
                      " / ".join(f"{a / MIB:.1f}" for a in r["agent_rss"]) + " MiB",
                      f"{r['db_size'] / MIB:.1f} MiB", f"{r['db_size_in_use'] / MIB:.1f} MiB",
                      str(r["creates_per_s"] or "-"))
    Console(width=120).print(table)
    growth = {key: per_partition(rows, key) for key in
              ("controller_rss", "etcd_rss", "db_size", "db_size_in_use")}
    for key, value in growth.items():
        if value is not None:
            print(f"{key}: {value / 1024:.2f} KiB per partition")
    if args.json:
        args.json.write_text(json.dumps({
            "host": platform.node(), "steps": rows, "per_partition_bytes": growth,
            "clients": args.clients}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
