"""Helpers for the failure tests on the netns cluster (deploy/docker-compose.yml, each service
in a network namespace of its own, see deploy/netns_cluster.py).

`FailCluster` wraps a running NetnsCluster with what those tests need: a gRPC client that
fails over between the two controllers, the leader key read with the runner's etcdctl, the
nodes' run dirs on the host (live worker processes and their console rings), and waits with
deadlines whose failure shows the services' log tails. bench/failover.py uses it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import controller_pb2_grpc as cgrpc
from viridian.v1 import types_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
GUESTS = REPO / "tests" / "guests"
for _p in (REPO / "deploy", REPO / "tests" / "integration", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from netns_cluster import NetnsCluster  # noqa: E402

from controller.embedded import open_channel  # noqa: E402
from node_agent.runtime.forkserver import proc_starttime  # noqa: E402
from node_agent.runtime.worker_console import read_ring  # noqa: E402

NODES = ("node-1", "node-2", "node-3")
CONTROLLERS = ("controller-1", "controller-2")
ETCDS = ("etcd-1", "etcd-2", "etcd-3")
TTL_S = 3.0  # the compose file's --lease-ttl
T = TypeVar("T")
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


def compile_guest(source: Path, out: Path) -> Path:
    cmd = ["gcc", "-O2", "-static", "-o", str(out), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return out


def phase(p: pb.Partition) -> str:
    return pb.PartitionPhase.Name(p.status.phase).removeprefix("PARTITION_PHASE_")


def wait_until(probe: Callable[[], T | None], what: str, timeout: float,
               interval: float = 0.05, on_fail: Callable[[], str] | None = None) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except grpc.RpcError as err:  # a controller going away mid-probe: probe again
            last = None
            if isinstance(err, grpc.Call) and err.code() not in RETRY_CODES:
                raise
        if last:
            return last
        time.sleep(interval)
    extra = on_fail() if on_fail else ""
    raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what} "
                         f"(last: {last!r})\n{extra}")


class Api:
    """The public API with failover between controller addresses (as the CLI does it)."""

    def __init__(self, addresses: Sequence[str], tls: tuple[bytes, str]) -> None:
        self.addresses = list(addresses)
        self._channels = [open_channel(a, *tls) for a in self.addresses]
        self._stubs = [cgrpc.ControllerStub(ch) for ch in self._channels]
        self._good = 0

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def stub(self) -> cgrpc.ControllerStub:
        """The stub of the controller that answered last (for calls made by hand)."""
        return self._stubs[self._good]

    def call(self, method: str, request: Any, timeout: float = 3.0) -> Any:
        err: grpc.RpcError | None = None
        for i in range(len(self._stubs)):
            k = (self._good + i) % len(self._stubs)
            try:
                reply = getattr(self._stubs[k], method)(request, timeout=timeout)
            except grpc.RpcError as e:
                if isinstance(e, grpc.Call) and e.code() not in RETRY_CODES:
                    raise
                err = e
                continue
            self._good = k
            return reply
        assert err is not None
        raise err

    def partitions(self) -> dict[str, pb.Partition]:
        """Every partition (all pages of the listing)."""
        out: dict[str, pb.Partition] = {}
        token = ""
        while True:
            reply = self.call("ListPartitions", cpb.ListPartitionsRequest(
                page_size=5000, page_token=token), timeout=10)
            out.update((p.name, p) for p in reply.partitions)
            token = reply.next_page_token
            if not token:
                return out

    def get(self, name: str) -> pb.Partition:
        return self.call("GetPartition", cpb.GetPartitionRequest(name=name))  # type: ignore

    def nodes(self) -> dict[str, str]:
        reply = self.call("ListNodes", cpb.ListNodesRequest())
        return {n.name: pb.NodeState.Name(n.status.state).removeprefix("NODE_STATE_")
                for n in reply.nodes}

    def events(self) -> list[pb.Event]:
        """Every event kept (all pages of the listing), oldest first."""
        out: list[pb.Event] = []
        token = ""
        while True:
            reply = self.call("ListEvents", cpb.ListEventsRequest(
                page_size=5000, page_token=token), timeout=10)
            out += reply.events
            token = reply.next_page_token
            if not token:
                return out

    def create(self, name: str, image: str, args: Sequence[str], ha: bool = False,
               timeout: float = 10.0, strategy: str = "", vcpus: int = 1,
               memory_bytes: int = 16 << 20) -> pb.Partition:
        spec = pb.PartitionSpec(image=image, args=list(args), vcpus=vcpus,
                                memory_bytes=memory_bytes, ha=ha,
                                desired_state=pb.DESIRED_STATE_RUNNING,
                                placement_strategy=strategy)
        return self.call(  # type: ignore[no-any-return]
            "CreatePartition", cpb.CreatePartitionRequest(name=name, spec=spec), timeout)

    def create_on(self, node: str, specs: Sequence[tuple[str, str, Sequence[str], bool]],
                  others: Sequence[str] = NODES, timeout: float = 20.0) -> None:
        """Create (name, image, args, ha) partitions on node: the other nodes are cordoned
        until every one of them is Running there."""
        cordoned = [n for n in others if n != node]
        for n in cordoned:
            self.call("CordonNode", cpb.CordonNodeRequest(name=n))
        try:
            for name, image, args, ha in specs:
                self.create(name, image, args, ha)
            for name, *_ in specs:
                wait_until(lambda name=name: phase(self.get(name)) == "RUNNING",  # type: ignore
                           f"{name} Running", timeout)
        finally:
            for n in cordoned:
                self.call("UncordonNode", cpb.CordonNodeRequest(name=n))
        for name, *_ in specs:
            assert self.get(name).status.node == node, self.get(name).status

    def delete(self, name: str) -> None:
        self.call("DeletePartition", cpb.DeletePartitionRequest(name=name, force=True))

    def event_reasons(self, obj: str | None = None) -> list[str]:
        return [e.reason for e in self.events() if obj is None or e.object == obj]


@dataclass(frozen=True)
class Worker:
    node: str
    name: str
    pid: int
    epoch: int


def beats(text: bytes | str) -> list[int]:
    """The realtime ns of every complete `beat N` line of hb_beat's output."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    out: list[int] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "beat" and parts[1].isdigit():
            out.append(int(parts[1]))
    return out


def _arg(argv: Sequence[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def roles(c: NetnsCluster) -> dict[str, list[str]]:
    """The cluster's services by what they run: "etcd", "controller" and "agent" (in the
    compose file's order). The default compose file gives ETCDS, CONTROLLERS and NODES."""
    out: dict[str, list[str]] = {"etcd": [], "controller": [], "agent": []}
    for svc in c.selected:
        argv = c.services[svc].argv
        if argv[:1] == ["etcd"]:
            out["etcd"].append(svc)
        elif argv[:2] in (["viridian", "controller"], ["viridian", "agent"]):
            out[argv[1]].append(svc)
    return out


def agent_nodes(c: NetnsCluster) -> dict[str, str]:
    """Node name (the agent's --name) -> its service."""
    return {_arg(c.services[s].argv, "--name") or s: s for s in roles(c)["agent"]}


class FailCluster:
    def __init__(self, c: NetnsCluster) -> None:
        self.c = c
        found = roles(c)
        self.controllers = tuple(found["controller"]) or CONTROLLERS
        self.etcds = tuple(found["etcd"]) or ETCDS
        self.node_services = agent_nodes(c)
        self.nodes = tuple(self.node_services) or NODES
        self.ctl_addrs = [f"{c.address(s)}:50051" for s in self.controllers]
        self.ctl = ",".join(self.ctl_addrs)
        # The compose file's `certs` service wrote the cluster's certificates to this volume.
        self.pki = c.run_dir / "volumes" / "pki"
        self.api = Api(self.ctl_addrs, self.admin_tls())

    def admin_tls(self) -> tuple[bytes, str]:
        """(cluster CA, admin token) from the pki volume."""
        admin = self.pki / "admin"
        return (admin / "ca.pem").read_bytes(), (admin / "token").read_text().strip()

    def cli_flags(self) -> list[str]:
        """What the CLI needs to reach this cluster."""
        admin = self.pki / "admin"
        return ["--ca", str(admin / "ca.pem"), "--token-file", str(admin / "token")]

    def etcd_tls(self) -> grpc.ChannelCredentials:
        etcd = self.pki / "etcd-etcd"
        return grpc.ssl_channel_credentials((etcd / "ca.pem").read_bytes(),
                                            (etcd / "key.pem").read_bytes(),
                                            (etcd / "cert.pem").read_bytes())

    # -- the host's view of the nodes --
    def run_dir(self, node: str) -> Path:
        svc = self.node_services.get(node)
        inside = _arg(self.c.services[svc].argv, "--run-dir") if svc else None
        if svc is None or inside is None:
            return self.c.run_dir / "volumes" / f"{node}-run" / "run"
        return self.c.host_path(svc, inside)

    def part_dir(self, node: str, name: str) -> Path:
        return self.run_dir(node) / "workers" / "partitions" / name

    def workers(self, node: str) -> list[Worker]:
        """Live worker processes of node (pid file + matching process start time)."""
        found: list[Worker] = []
        parts = self.run_dir(node) / "workers" / "partitions"
        try:
            dirs = list(parts.iterdir())
        except OSError:
            return []
        for pdir in dirs:
            if pdir.name.startswith("."):
                continue
            try:
                pid_s, start_s = (pdir / "pid").read_text().split()[:2]
                meta = json.loads((pdir / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            if proc_starttime(int(pid_s)) == int(start_s):
                found.append(Worker(node, pdir.name, int(pid_s), int(meta["epoch"])))
        return found

    def live_workers(self) -> dict[str, list[Worker]]:
        out: dict[str, list[Worker]] = {}
        for node in self.nodes:
            for w in self.workers(node):
                out.setdefault(w.name, []).append(w)
        return out

    def console(self, node: str, name: str) -> bytes:
        data, _ = read_ring(self.part_dir(node, name) / "console.log", 0)
        return data

    def logs(self, name: str, timeout: float = 10.0) -> bytes:
        """`viridian logs` through the API (what the controller-assigned copy printed)."""
        stream = self.api.call("PartitionLogs", cpb.PartitionLogsRequest(name=name), timeout)
        return b"".join(chunk.data for chunk in stream)

    # -- etcd --
    def etcdctl(self, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        eps = ",".join(f"https://{self.c.address(e)}:2379" for e in self.etcds
                       if self.c.pid(e) is not None)
        etcd = self.pki / "etcd-etcd"
        # The members' certificates name them by host name, not by these namespace
        # addresses: the client certificate still has to be the cluster's.
        tls = [f"--cacert={etcd / 'ca.pem'}", f"--cert={etcd / 'cert.pem'}",
               f"--key={etcd / 'key.pem'}", "--insecure-skip-tls-verify"]
        return subprocess.run(
            [str(self.c.programs["etcdctl"]), f"--endpoints={eps}", "--command-timeout=2s",
             *tls, *args], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "ETCDCTL_API": "3"})

    def leader(self) -> str:
        """The controller named by the /viridian/leader key ("" if none)."""
        res = self.etcdctl("get", "/viridian/leader", "--print-value-only")
        ident = res.stdout.strip() if res.returncode == 0 else ""
        # The identity is "<hostname>-<pid>"; the runner's main process is the controller
        # (ip netns exec and the shim exec into it).
        pid = ident.rsplit("-", 1)[-1]
        for s in self.controllers:
            if pid and pid == str(self.c.pid(s)):
                return s
        return ident

    # -- waits --
    def tails(self, services: Sequence[str] | None = None, n: int = 25) -> str:
        return "\n".join(f"--- {s}\n{self.c.logs(s, n)}" for s in (services or self.c.selected))

    def wait_nodes(self, want: dict[str, str], timeout: float) -> float:
        t = time.monotonic()
        wait_until(lambda: all(self.api.nodes().get(n) == s for n, s in want.items()),
                   f"nodes {want}", timeout, 0.1, self.tails)
        return time.monotonic() - t

    def wait_phase(self, name: str, want: str, timeout: float,
                   cond: Callable[[pb.Partition], bool] | None = None) -> pb.Partition:
        def probe() -> pb.Partition | None:
            p = self.api.get(name)
            return p if phase(p) == want and (cond is None or cond(p)) else None

        return wait_until(probe, f"{name} {want}", timeout, 0.05,
                          lambda: str(self.api.get(name).status) + self.tails())

    def undo_faults(self) -> None:
        """Thaw what is frozen, heal black holes, links up, no netem, start what is
        stopped."""
        for svc in sorted(self.c.frozen()):
            self.c.thaw(svc)
        self.c.heal_all()
        for svc in self.c.selected:
            self.c.restore(svc)
            if self.c.netem_state(svc):
                self.c.clear_netem(svc)
        for svc in self.c.selected:
            if self.c.pid(svc) is None:
                self.c.start(svc)

    def ensure_ready(self, timeout: float = 30.0) -> None:
        """No fault left, every service running, every node Ready: the baseline between
        tests."""
        self.undo_faults()
        self.wait_nodes(dict.fromkeys(self.nodes, "READY"), timeout)


def cluster_up(run_dir: Path, compose: Path = COMPOSE,
               images: dict[str, Path] | None = None) -> Iterator[FailCluster]:
    """Start the compose cluster, wait for 3 Ready nodes, push images; clean up after."""
    from itutil import run_cli

    c = NetnsCluster(compose, run_dir, health_timeout=90)
    fc: FailCluster | None = None
    try:
        with c:
            fc = FailCluster(c)
            fc.wait_nodes(dict.fromkeys(fc.nodes, "READY"), 30)
            for name, path in (images or {}).items():
                res = run_cli(fc.ctl, *fc.cli_flags(), "image", "push", name, str(path))
                assert res.code == 0, str(res)
            yield fc
    finally:
        if fc is not None:
            fc.api.close()
    left = c.leftovers()
    assert left == [], f"left behind: {left}"
