"""Quick Migration through the cluster, direct vs relayed, with the controller's memory.

Starts the embedded 2-node cluster (real etcd, controller and agents, TLS), runs
tests/guests/sr_mem.c (touches N MiB with non-zero data) pinned to node-1, and moves it to
node-2 through the public API, timing each step:

  save      SavePartition → Saved (pause, state file written, fsync'd and hashed on node-1)
  move      MovePartition to node-2
  restore   StartPartition → Running on node-2 (placement, the state fetched from node-1 and
            hashed as it arrives, the worker fork and the restore)
  fetch     the transfer alone, as node-2 reports it (its StateFetched event)

Two paths: **direct** (node-2 fetches from node-1's StateSource with a ticket) and
**relay** (node-1's agent is restarted announcing an address nobody listens on, so node-2
falls back to PullState through the controller). The controller's RSS is read from
/proc/PID/status: VmRSS before the save, the peak while the partition moves (VmHWM, reset
through clear_refs just before, and sampled every 20 ms), and VmRSS after.

Usage: python bench/migration.py [--touched 256,1024] [--paths direct,relay] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from viridian.v1 import controller_pb2 as cpb  # noqa: E402
from viridian.v1 import controller_pb2_grpc as cgrpc  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

from controller.embedded import Cluster, open_channel  # noqa: E402
from controller.etcd_server import free_port  # noqa: E402

P = pb
MIB = 1 << 20
NODE_VCPUS, NODE_MEMORY = 4, 16 << 30


def wait(what: str, probe: object, timeout: float = 180.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe() if callable(probe) else None
        if got:
            return got
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def phase(stub: cgrpc.ControllerStub, name: str, want: int) -> pb.Partition:
    def probe() -> pb.Partition | None:
        p = stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=10)
        if p.status.phase == P.PARTITION_PHASE_FAILED:
            raise RuntimeError(f"{name} failed: {p.status.reason}")
        return p if p.status.phase == want else None

    got = wait(f"{name} {P.PartitionPhase.Name(want)}", probe)
    assert isinstance(got, pb.Partition)
    return got


def events(stub: cgrpc.ControllerStub, name: str) -> list[pb.Event]:
    return list(stub.ListEvents(cpb.ListEventsRequest(object=name), timeout=10).events)


class Rss:
    """A process's resident memory: before, the peak of a window, after (bytes)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field}")

    def start(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")   # VmHWM := VmRSS
        self.peak = self.read()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.read())

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return max(self.peak, self.read("VmHWM"))


def restart_agent(cluster: Cluster, stub: cgrpc.ControllerStub, node: str,
                  address: str) -> None:
    old = stub.GetNode(cpb.GetNodeRequest(name=node), timeout=5).spec.address
    proc = cluster.agents[node]
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    extra = ["--address", address] if address else []
    cluster.agents[node] = cluster._cli(*cluster.agent_args(node, NODE_VCPUS, NODE_MEMORY),
                                        *extra, log=cluster.data_dir / "logs" / f"{node}.log")

    def registered() -> bool:
        n = stub.GetNode(cpb.GetNodeRequest(name=node), timeout=5)
        moved = n.spec.address == address if address else n.spec.address != old
        return moved and n.status.state == P.NODE_STATE_READY

    wait(f"{node} registered again", registered, 60)


def one(stub: cgrpc.ControllerStub, rss: Rss, path: str, touched: int) -> dict[str, object]:
    name = f"qm-{path}-{touched}"
    stub.CreatePartition(cpb.CreatePartitionRequest(name=name, spec=pb.PartitionSpec(
        image="srmem", args=[str(touched)], memory_bytes=(touched + 256) * MIB,
        node="node-1", desired_state=pb.DESIRED_STATE_RUNNING)), timeout=10)
    phase(stub, name, P.PARTITION_PHASE_RUNNING)
    wait(f"{name} ready", lambda: b"ready" in b"".join(
        c.data for c in stub.PartitionLogs(cpb.PartitionLogsRequest(name=name), timeout=10)))
    before = rss.read()
    rss.start()
    t0 = time.perf_counter()
    stub.SavePartition(cpb.PartitionRef(name=name), timeout=10)
    saved = phase(stub, name, P.PARTITION_PHASE_SAVED)
    t1 = time.perf_counter()
    stub.MovePartition(cpb.MovePartitionRequest(name=name, to_node="node-2"), timeout=10)
    t2 = time.perf_counter()
    stub.StartPartition(cpb.StartPartitionRequest(name=name), timeout=10)
    running = phase(stub, name, P.PARTITION_PHASE_RUNNING)
    t3 = time.perf_counter()
    peak = rss.stop()
    after = rss.read()
    assert running.status.node == "node-2", running.status.node
    fetched = wait("StateFetched", lambda: [e.message for e in events(stub, name)
                                            if e.reason == "StateFetched"], 30)
    assert isinstance(fetched, list)
    message = fetched[-1]
    took = re.search(r" in ([0-9.]+)s", message)
    relayed = any(e.reason == "StateRelayed" for e in events(stub, name))
    went = "relay" if "through the controller" in message else "direct"
    if went != path or relayed != (path == "relay"):
        raise RuntimeError(f"{name}: expected the {path} path, got: {message}")
    stub.DeletePartition(cpb.DeletePartitionRequest(name=name, force=True), timeout=10)
    state_mib = saved.status.saved_state.size_bytes / MIB
    fetch_s = float(took.group(1)) if took else 0.0
    return {"path": path, "touched_mib": touched, "state_mib": round(state_mib, 1),
            "save_s": round(t1 - t0, 3), "move_s": round(t2 - t1, 3),
            "restore_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3),
            "fetch_s": fetch_s,
            "fetch_mib_s": round(state_mib / fetch_s, 1) if fetch_s else None,
            "ctl_rss_before_mib": round(before / MIB, 1),
            "ctl_rss_peak_growth_mib": round((peak - before) / MIB, 1),
            "ctl_rss_after_growth_mib": round((after - before) / MIB, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--touched", default="256,1024", help="MiB touched, comma-separated")
    parser.add_argument("--paths", default="direct,relay")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "bench" / "results" / "migration.json")
    args = parser.parse_args()
    touched = [int(x) for x in args.touched.split(",")]
    paths = args.paths.split(",")
    work = Path(tempfile.mkdtemp(prefix="vmig-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    cluster = Cluster(work / "data", 2, address, node_vcpus=NODE_VCPUS,
                      node_memory=NODE_MEMORY)
    rows: list[dict[str, object]] = []
    try:
        guest = work / "sr_mem"
        subprocess.run(["gcc", "-O2", "-static", "-o", str(guest),
                        str(ROOT / "tests" / "guests" / "sr_mem.c")], check=True)
        cluster.start()
        stub = cgrpc.ControllerStub(open_channel(address, cluster.ca_pem(),
                                                 cluster.admin_token()))
        wait("2 nodes Ready", lambda: sum(
            n.status.state == P.NODE_STATE_READY
            for n in stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes) == 2, 60)
        res = subprocess.run([sys.executable, "-m", "controller.cli", "--controller", address,
                              "image", "push", "srmem", str(guest)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        if res.returncode:
            raise RuntimeError(f"push failed: {res.stderr}")
        assert cluster.controller is not None
        rss = Rss(cluster.controller.pid)
        for path in paths:
            if path == "relay":
                restart_agent(cluster, stub, "node-1", f"127.0.0.1:{free_port()}")
            for mib in touched:
                rows.append(one(stub, rss, path, mib))
            if path == "relay":
                restart_agent(cluster, stub, "node-1", "")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("Quick Migration through the cluster (2 nodes on one host; embedded cluster, TLS)")
    head = (f"{'path':>6} {'touched':>8} {'state':>9} {'save':>7} {'restore':>8} "
            f"{'fetch':>7} {'MiB/s':>6} {'total':>7} {'ctl RSS':>8} {'peak +':>7} "
            f"{'after +':>8}")
    print(head)
    for r in rows:
        print(f"{r['path']:>6} {r['touched_mib']:>6}Mi {r['state_mib']:>7}Mi "
              f"{r['save_s']:>6}s {r['restore_s']:>7}s {r['fetch_s']:>6}s "
              f"{r['fetch_mib_s'] or '-':>6} {r['total_s']:>6}s "
              f"{r['ctl_rss_before_mib']:>6}Mi {r['ctl_rss_peak_growth_mib']:>5}Mi "
              f"{r['ctl_rss_after_growth_mib']:>6}Mi")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": "2 cores", "rows": rows}, indent=2))
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
