"""Quick Migration through the cluster (issue 5): save on one node, move, restore on another.

Starts the embedded 2-node cluster (real etcd, controller and agents), runs
tests/guests/sr_mem.c (fills N MiB with non-zero data, then prints every 5 ms) pinned to
node-1, and times the user-visible steps through the public API:

  save      SavePartition → phase Saved (pause, state file written and hashed on node-1)
  move      MovePartition to node-2 (recorded in etcd)
  restore   StartPartition → phase Running on node-2 (state pulled from node-1 through the
            controller, sha256 verified, restored; the guest continues)

Usage: python bench/move.py [--json PATH] [--cases 1024:16,1024:256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from viridian.v1 import controller_pb2 as cpb  # noqa: E402
from viridian.v1 import controller_pb2_grpc as cgrpc  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

from controller.embedded import Cluster, open_channel  # noqa: E402
from controller.etcd_server import free_port  # noqa: E402

P = pb


def push(stub: cgrpc.ControllerStub, name: str, path: Path) -> None:
    data = path.read_bytes()

    def reqs() -> Iterator[cpb.PushImageRequest]:
        yield cpb.PushImageRequest(header=cpb.ImageHeader(name=name, format="elf",
                                                          size_bytes=len(data)))
        for i in range(0, len(data), 1 << 20):
            yield cpb.PushImageRequest(chunk=data[i:i + (1 << 20)])

    stub.PushImage(reqs(), timeout=60)


def wait_phase(stub: cgrpc.ControllerStub, name: str, phase: int,
               timeout: float = 120.0) -> pb.Partition:
    deadline = time.monotonic() + timeout
    while True:
        p = stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=10)
        if p.status.phase == phase:
            return p
        if p.status.phase == P.PARTITION_PHASE_FAILED or time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {P.PartitionPhase.Name(p.status.phase)} "
                               f"({p.status.reason})")
        time.sleep(0.01)


def wait_nodes(stub: cgrpc.ControllerStub, n: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            nodes = stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes
            if sum(x.status.state == P.NODE_STATE_READY for x in nodes) >= n:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise RuntimeError("nodes not ready")


def one(stub: cgrpc.ControllerStub, memory_mib: int, touched: int) -> dict[str, object]:
    name = f"mv-{memory_mib}-{touched}"
    stub.CreatePartition(cpb.CreatePartitionRequest(name=name, spec=pb.PartitionSpec(
        image="srmem", args=[str(touched)], memory_bytes=memory_mib << 20, node="node-1")))
    wait_phase(stub, name, P.PARTITION_PHASE_RUNNING)
    deadline = time.monotonic() + 60
    while True:  # the guest has touched its memory once it prints "ready"
        out = b"".join(c.data for c in stub.PartitionLogs(
            cpb.PartitionLogsRequest(name=name), timeout=10))
        if b"ready" in out or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    t0 = time.perf_counter()
    stub.SavePartition(cpb.PartitionRef(name=name))
    saved = wait_phase(stub, name, P.PARTITION_PHASE_SAVED)
    t1 = time.perf_counter()
    stub.MovePartition(cpb.MovePartitionRequest(name=name, to_node="node-2"))
    t2 = time.perf_counter()
    stub.StartPartition(cpb.StartPartitionRequest(name=name))
    running = wait_phase(stub, name, P.PARTITION_PHASE_RUNNING)
    t3 = time.perf_counter()
    assert running.status.node == "node-2", running.status.node
    stub.DeletePartition(cpb.DeletePartitionRequest(name=name, force=True))
    return {"memory_mib": memory_mib, "touched_mib": touched,
            "state_mib": round(saved.status.saved_state.size_bytes / (1 << 20), 1),
            "save_s": round(t1 - t0, 3), "move_s": round(t2 - t1, 3),
            "restore_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1024:16,1024:256,16384:256",
                        help="MEMORY_MIB:TOUCHED_MIB pairs")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "move.json")
    args = parser.parse_args()
    cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
    work = Path(tempfile.mkdtemp(prefix="vmove-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    cluster = Cluster(work / "data", 2, address, node_vcpus=8, node_memory=24 << 30)
    rows = []
    try:
        guest = work / "sr_mem"
        subprocess.run(["gcc", "-O2", "-static", "-o", str(guest),
                        str(ROOT / "tests" / "guests" / "sr_mem.c")], check=True)
        cluster.start()
        stub = cgrpc.ControllerStub(open_channel(address, cluster.ca_pem(),
                                                 cluster.admin_token()))
        wait_nodes(stub, 2)
        push(stub, "srmem", guest)
        for memory_mib, touched in cases:
            rows.append(one(stub, memory_mib, touched))
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("Quick Migration through the cluster (2 nodes on one host, 2 cores)")
    print(f"{'partition':>10} {'touched':>8} {'state':>9} {'save':>7} {'move':>7} "
          f"{'restore':>8} {'total':>7}")
    for r in rows:
        print(f"{r['memory_mib']:>8}Mi {r['touched_mib']:>6}Mi {r['state_mib']:>7}Mi "
              f"{r['save_s']:>6}s {r['move_s']:>6}s {r['restore_s']:>7}s {r['total_s']:>6}s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": "2 cores", "rows": rows}, indent=2))
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
