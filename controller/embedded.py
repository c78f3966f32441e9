"""`viridian up`: an embedded etcd, one controller and N node agents, in the foreground.

Each part is a real process (as in a multi-host cluster); Ctrl-C or SIGTERM stops them all,
partitions' workers included, leaving no process behind. State lives under the data dir, so
a second `up` on the same dir finds the earlier cluster.

Secure by default: a cluster CA under DATA/pki signs etcd's, the controller's and each
node's certificate (the embedded agents are certified directly, as `viridian certs --node`
does, rather than joining); an admin token is bootstrapped into the controller and saved,
with the CA, where the CLI looks for the --listen address.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.cli.credentials import forget_cluster, save_cluster
from controller.errors import NOSPACE_HINT
from controller.etcd_server import DEFAULT_QUOTA_BYTES, EtcdProcess, EtcdStartError
from controller.ports import default_agent_listen
from controller.security.files import ClusterPki
from controller.security.tls import controller_options, token_credentials

STOP_GRACE_S = 5.0
HEALTH_EVERY_S = 5.0  # how often `up` asks etcd whether it raised an alarm
DEFAULT_NODE_MEMORY = 8 << 30


@dataclass
class Cluster:
    data_dir: Path
    nodes: int
    listen: str
    lease_ttl: int = 3
    node_vcpus: int = 0
    node_memory: int = 0
    insecure: bool = False
    agent_listen: str = ""
    controller_flags: tuple[str, ...] = ()   # more controller options (tests, benches)
    etcd_quota: int = DEFAULT_QUOTA_BYTES
    web_listen: str = ""                     # the web console's address; "" = none
    metrics: bool = False                    # every server serves /metrics on loopback
    log_flags: tuple[str, ...] = ()          # --log-format/--log-level for every server
    metrics_listen: dict[str, str] = field(default_factory=dict)  # server -> HOST:PORT
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

    @property
    def pki(self) -> ClusterPki:
        return ClusterPki(self.data_dir / "pki")

    @property
    def agent_address(self) -> str:
        return self.agent_listen or default_agent_listen(self.listen)

    @property
    def web_url(self) -> str:
        return f"http://{self.web_listen}/" if self.web_listen else ""

    def ca_pem(self) -> bytes | None:
        return None if self.insecure else self.pki.ca().cert_pem

    def admin_token(self) -> str:
        return "" if self.insecure else self.pki.admin()[1]

    def controller_args(self) -> list[str]:
        """The controller's command line (also used to restart it)."""
        assert self.etcd is not None
        args = ["controller", "--listen", self.listen, "--agent-listen", self.agent_address,
                "--etcd", self.etcd.endpoint, "--lease-ttl", str(self.lease_ttl),
                "--data-dir", str(self.data_dir / "controller"), *self.log_flags,
                *self._metrics_flags("controller"), *self.controller_flags]
        if self.web_listen:
            args += ["--web-listen", self.web_listen]
        if self.insecure:
            return [*args, "--insecure"]
        host = self.listen.rsplit(":", 1)[0]
        ctl = self.pki.controller("embedded", [host])
        self.pki.write_bootstrap(ctl, [(self.admin_token(), "admin")])
        return [*args, "--pki-dir", str(ctl.path)]

    def agent_args(self, name: str, vcpus: int, memory: int) -> list[str]:
        args = ["agent", "--controller", self.agent_address, "--name", name,
                "--vcpus", str(vcpus), "--memory", str(memory),
                "--run-dir", str(self.data_dir / "agents" / name), *self.log_flags,
                *self._metrics_flags(name)]
        if self.insecure:
            return [*args, "--insecure"]
        return [*args, "--pki-dir", str(self.pki.node(name).path)]

    def _metrics_flags(self, server: str) -> list[str]:
        """--metrics-listen on a free loopback port, the same one on a restart."""
        if not self.metrics:
            return []
        if server not in self.metrics_listen:
            self.metrics_listen[server] = f"127.0.0.1:{free_port('127.0.0.1')}"
        return ["--metrics-listen", self.metrics_listen[server]]

    def metrics_urls(self) -> list[tuple[str, str]]:
        """(server, http://HOST:PORT/metrics) of every server serving metrics."""
        urls = []
        if self.metrics and self.etcd is not None:
            urls.append(("etcd", f"http://{self.etcd.host}:{self.etcd.metrics_port}/metrics"))
        return urls + [(name, f"http://{listen}/metrics")
                       for name, listen in self.metrics_listen.items()]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        tls_dir = None
        if not self.insecure:
            host = self.listen.rsplit(":", 1)[0]
            tls_dir = self.pki.etcd("embedded", [host]).path
            save_cluster(self.listen, self.pki.ca().cert_pem, self.admin_token())
        self.etcd = EtcdProcess(self.data_dir / "etcd", tls_dir=tls_dir,
                                quota_bytes=self.etcd_quota)
        self.etcd.start()
        self.controller = self._cli(*self.controller_args(), log=logs / "controller.log")
        wait_serving(self.listen, self.controller, logs / "controller.log", self.ca_pem())
        cpus = os.cpu_count() or 2
        vcpus = self.node_vcpus or max(cpus, 2)
        memory = self.node_memory or DEFAULT_NODE_MEMORY
        for i in range(1, self.nodes + 1):
            name = f"node-{i}"
            self.agents[name] = self._cli(*self.agent_args(name, vcpus, memory),
                                          log=logs / f"{name}.log")

    def describe(self) -> str:
        assert self.etcd is not None and self.controller is not None
        etcd_pid = self.etcd.proc.pid if self.etcd.proc else "-"
        lines = [
            f"etcd        {self.etcd.endpoint:<22} pid {etcd_pid}"
            f"  data {self.etcd.data_dir}",
            f"controller  {self.listen:<22} pid {self.controller.pid}"
            f"  agents on {self.agent_address}",
        ]
        for name, proc in self.agents.items():
            lines.append(f"agent       {name:<22} pid {proc.pid}  "
                         f"run dir {self.data_dir / 'agents' / name}")
        lines.append(f"logs        {self.data_dir / 'logs'}")
        for name, url in self.metrics_urls():
            lines.append(f"metrics     {name:<22} {url}")
        return "\n".join(lines)

    def failed(self) -> str:
        """A message if a part died on its own, else ""."""
        for name, proc in [("controller", self.controller), *self.agents.items()]:
            if proc is not None and proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}; see {self.data_dir}/logs"
        if self.etcd and self.etcd.proc and self.etcd.proc.poll() is not None:
            return f"etcd exited with code {self.etcd.proc.returncode}"
        return ""

    def etcd_alarm(self) -> str:
        """The reason etcd gives for being unhealthy ("" when healthy), e.g. "ALARM NOSPACE"."""
        if self.etcd is None:
            return ""
        healthy, reason = self.etcd.health()
        return "" if healthy else reason

    def stop(self) -> None:
        procs = [p for p in self.agents.values() if p.poll() is None]
        _terminate(procs)
        stop_workers(self.data_dir / "agents")
        if self.controller is not None:
            _terminate([self.controller])
        if self.etcd is not None:
            self.etcd.stop()
        if not self.insecure:
            forget_cluster(self.listen)


def free_port(host: str) -> int:
    """A port nothing listens on now (the server binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
                handle.stop(0.0, margin_s=1.0)  # Turn Off: the cluster is going away
        manager.close()


def open_channel(address: str, ca_pem: bytes | None, token: str = "") -> grpc.Channel:
    """A channel to a controller's API: TLS pinned to ca_pem (with the token), or plaintext."""
    if ca_pem is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, token_credentials(ca_pem, token),
                               options=controller_options())


def wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path,
                 ca_pem: bytes | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with open_channel(address, ca_pem) as channel:
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


def nospace_message(reason: str) -> str:
    """What `up` prints when etcd is unhealthy ("" when it is not for lack of space)."""
    if "NOSPACE" not in reason:
        return ""
    return f"error: {NOSPACE_HINT}"


def default_web_listen(listen: str) -> str:
    """127.0.0.1 and the API port + 2 (after the agent port) if it is free, else a free
    port."""
    port = int(listen.rpartition(":")[2] or 0)
    wanted = port + 2 if port and port + 2 < 65536 else 0
    for candidate in (wanted, 0) if wanted else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return f"127.0.0.1:{sock.getsockname()[1]}"
    raise OSError("no free port for the web console")


def run_embedded_cluster(nodes: int, data_dir: Path, listen: str = "127.0.0.1:50051",
                         insecure: bool = False, etcd_quota: int = DEFAULT_QUOTA_BYTES,
                         web_listen: str = "", metrics: bool = True,
                         log_flags: tuple[str, ...] = ()) -> int:
    if web_listen == "off":
        web_listen = ""
    else:
        web_listen = web_listen or default_web_listen(listen)
    cluster = Cluster(data_dir.resolve(), nodes, listen, insecure=insecure,
                      etcd_quota=etcd_quota, web_listen=web_listen, metrics=metrics,
                      log_flags=log_flags)
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
        if insecure:
            print("WARNING: --insecure: plaintext, no authentication", flush=True)
        else:
            print(f"TLS on every channel; admin credentials for {listen} saved for the CLI "
                  f"(CA and certificates in {cluster.data_dir / 'pki'})", flush=True)
        if cluster.web_url:
            login = ("" if insecure else
                     f" (log in with the admin token in {cluster.data_dir / 'pki/admin/token'})")
            print(f"Web console: {cluster.web_url}{login}", flush=True)
        print(f"Try: viridian --controller {listen} nodes    (Ctrl-C stops everything)",
              flush=True)
        warned = False
        next_health = 0.0
        while not stop.wait(0.5):
            problem = cluster.failed()
            if problem:
                print(f"error: {problem}", file=sys.stderr, flush=True)
                code = 1
                break
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + HEALTH_EVERY_S
                hint = nospace_message(cluster.etcd_alarm())
                if hint and not warned:
                    print(hint, file=sys.stderr, flush=True)
                warned = bool(hint)
    except (EtcdStartError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("stopping...", flush=True)
        cluster.stop()
        print("stopped.", flush=True)
    return code
