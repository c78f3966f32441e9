"""`viridian up`: an embedded etcd, one controller and N node agents, in the foreground.

Each part is a real process (as in a multi-host cluster); Ctrl-C or SIGTERM stops them all,
partitions' workers included, leaving no process behind. State lives under the data dir, so
a second `up` on the same dir finds the earlier cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.etcd_server import EtcdProcess, EtcdStartError

STOP_GRACE_S = 5.0
DEFAULT_NODE_MEMORY = 8 << 30


@dataclass
class Cluster:
    data_dir: Path
    nodes: int
    listen: str
    lease_ttl: int = 3
    node_vcpus: int = 0
    node_memory: int = 0
    etcd: EtcdProcess | None = None
    controller: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _cli(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        out = open(log, "ab")
        with out:
            return subprocess.Popen(
                [sys.executable, "-m", "controller.cli", *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        self.etcd = EtcdProcess(self.data_dir / "etcd")
        self.etcd.start()
        self.controller = self._cli(
            "controller", "--listen", self.listen, "--etcd", self.etcd.endpoint,
            "--lease-ttl", str(self.lease_ttl), log=logs / "controller.log",
        )
        wait_serving(self.listen, self.controller, logs / "controller.log")
        cpus = os.cpu_count() or 2
        vcpus = self.node_vcpus or max(cpus, 2)
        memory = self.node_memory or DEFAULT_NODE_MEMORY
        for i in range(1, self.nodes + 1):
            name = f"node-{i}"
            self.agents[name] = self._cli(
                "--controller", self.listen, "agent", "--name", name,
                "--vcpus", str(vcpus), "--memory", str(memory),
                "--run-dir", str(self.data_dir / "agents" / name),
                log=logs / f"{name}.log",
            )

    def describe(self) -> str:
        assert self.etcd is not None and self.controller is not None
        etcd_pid = self.etcd.proc.pid if self.etcd.proc else "-"
        lines = [
            f"etcd        {self.etcd.endpoint:<22} pid {etcd_pid}"
            f"  data {self.etcd.data_dir}",
            f"controller  {self.listen:<22} pid {self.controller.pid}",
        ]
        for name, proc in self.agents.items():
            lines.append(f"agent       {name:<22} pid {proc.pid}  "
                         f"run dir {self.data_dir / 'agents' / name}")
        lines.append(f"logs        {self.data_dir / 'logs'}")
        return "\n".join(lines)

    def failed(self) -> str:
        """A message if a part died on its own, else ""."""
        for name, proc in [("controller", self.controller), *self.agents.items()]:
            if proc is not None and proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}; see {self.data_dir}/logs"
        if self.etcd and self.etcd.proc and self.etcd.proc.poll() is not None:
            return f"etcd exited with code {self.etcd.proc.returncode}"
        return ""

    def stop(self) -> None:
        procs = [p for p in self.agents.values() if p.poll() is None]
        _terminate(procs)
        stop_workers(self.data_dir / "agents")
        if self.controller is not None:
            _terminate([self.controller])
        if self.etcd is not None:
            self.etcd.stop()


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_workers(agents_dir: Path) -> None:
    """Stop every partition worker left under the agents' run dirs (they outlive agents)."""
    if not agents_dir.is_dir():
        return
    from node_agent.runtime.workers import WorkerManager

    for run_dir in sorted(p for p in agents_dir.iterdir() if p.is_dir()):
        workers = run_dir / "workers"
        if not (workers / "partitions").is_dir():
            continue
        manager = WorkerManager(workers)
        for handle in manager.adopt():
            if handle.poll() is None:
                handle.stop(grace_s=1.0)
        manager.close()


def wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path,
                 timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"controller exited with code {proc.returncode}; see {log}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"controller not serving on {address} after {timeout:.0f}s; see {log}")


def run_embedded_cluster(nodes: int, data_dir: Path, listen: str = "127.0.0.1:50051") -> int:
    cluster = Cluster(data_dir.resolve(), nodes, listen)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        cluster.start()
        print("Viridian is up:", flush=True)
        print(cluster.describe(), flush=True)
        print(f"Try: viridian --controller {listen} nodes    (Ctrl-C stops everything)",
              flush=True)
        while not stop.wait(0.5):
            problem = cluster.failed()
            if problem:
                print(f"error: {problem}", file=sys.stderr, flush=True)
                code = 1
                break
    except (EtcdStartError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("stopping...", flush=True)
        cluster.stop()
        print("stopped.", flush=True)
    return code
