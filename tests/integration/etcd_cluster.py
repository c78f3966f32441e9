"""A real 3-member etcd cluster on loopback, for failover tests.

Each member runs in its own process group (start_new_session), and its pid is recorded:
signals go to those recorded groups only, never to processes found by name. Elections are
made faster than etcd's defaults (heartbeat 50 ms, election timeout 500 ms) so that a test
that kills the leader sees a new one within about a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from pyetcd import etcdrpc

from controller.etcd_server import etcd_binary, free_port

HEARTBEAT_MS = 50
ELECTION_MS = 500


@dataclass
class Member:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped by the test

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """Three etcd members started together with --initial-cluster on free ports."""

    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        self.size = size
        self.members: list[Member] = []
        self.initial_cluster = ""
        self._attempt = 0

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 20.0, attempts: int = 3) -> None:
        """Start every member and wait until each is healthy. A free port can be taken by
        another process before etcd binds it (other test runs share the machine): then the
        cluster is started again on new ports."""
        for attempt in range(1, attempts + 1):
            self._attempt += 1
            self.members = [
                Member(f"m{i}", self.base / f"try{self._attempt}" / f"m{i}",
                       free_port(), free_port())
                for i in range(self.size)
            ]
            self.initial_cluster = ",".join(
                f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
            for m in self.members:
                self._spawn(m)
            deadline = time.monotonic() + timeout
            try:
                for m in self.members:
                    self.wait_healthy(m, deadline - time.monotonic())
                return
            except (RuntimeError, TimeoutError):
                self.stop()
                if attempt == attempts:
                    raise

    def _spawn(self, m: Member) -> None:
        m.data_dir.mkdir(parents=True, exist_ok=True)
        client = f"http://127.0.0.1:{m.client_port}"
        peer = f"http://127.0.0.1:{m.peer_port}"
        with open(m.data_dir / "etcd.log", "ab") as log:
            m.proc = subprocess.Popen(
                [
                    str(etcd_binary()),
                    "--name", m.name,
                    "--data-dir", str(m.data_dir / "data"),
                    "--listen-client-urls", client,
                    "--advertise-client-urls", client,
                    "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", self.initial_cluster,
                    "--initial-cluster-state", "new",
                    "--initial-cluster-token", f"viridian-test-{os.getpid()}",
                    "--heartbeat-interval", str(HEARTBEAT_MS),
                    "--election-timeout", str(ELECTION_MS),
                    "--log-level", "warn",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        m.stopped = False

    def wait_healthy(self, m: Member, timeout: float) -> None:
        """Until the member answers /health with a leader (etcd checks that)."""
        deadline = time.monotonic() + timeout
        url = f"http://{m.endpoint}/health"
        while True:
            if not m.alive:
                tail = (m.data_dir / "etcd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"etcd {m.name} exited:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd {m.name} not healthy within {timeout:.1f}s")
            time.sleep(0.05)

    # -- member ids and the leader ---------------------------------------------------------

    def status(self, m: Member, timeout: float = 1.0) -> tuple[int, int]:
        """(member id, leader id) as the member itself reports them."""
        with grpc.insecure_channel(m.endpoint) as channel:
            resp = etcdrpc.MaintenanceStub(channel).Status(
                etcdrpc.StatusRequest(), timeout=timeout)
        return int(resp.header.member_id), int(resp.leader)

    def leader(self, timeout: float = 10.0) -> Member:
        """The member every running member agrees leads."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ids = {m.name: self.status(m) for m in self.members if m.alive and not m.stopped}
                leaders = {leader for _, leader in ids.values()}
                if len(leaders) == 1 and 0 not in leaders:
                    (lead,) = leaders
                    for m in self.members:
                        if m.name in ids and ids[m.name][0] == lead:
                            return m
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the etcd members do not agree on a leader")
            time.sleep(0.05)

    # -- faults: signals to the recorded process groups only -------------------------------

    def _signal(self, m: Member, sig: signal.Signals) -> None:
        assert m.proc is not None
        os.killpg(m.pid, sig)  # the member's own group: start_new_session made pid == pgid

    def kill(self, m: Member) -> None:
        """SIGKILL: the member dies at once, its connections are reset."""
        if m.stopped:
            self._signal(m, signal.SIGCONT)
        self._signal(m, signal.SIGKILL)
        assert m.proc is not None
        m.proc.wait(10)
        m.stopped = False

    def pause(self, m: Member) -> None:
        """SIGSTOP: the member hangs with its TCP connections open."""
        self._signal(m, signal.SIGSTOP)
        m.stopped = True

    def resume(self, m: Member) -> None:
        if m.stopped and m.alive:
            self._signal(m, signal.SIGCONT)
        m.stopped = False

    @contextmanager
    def paused(self, *members: Member) -> Iterator[None]:
        for m in members:
            self.pause(m)
        try:
            yield
        finally:
            for m in members:
                self.resume(m)

    def stop(self) -> None:
        """Kill every member this cluster started (and only those)."""
        for m in self.members:
            if m.alive:
                try:
                    if m.stopped:
                        self._signal(m, signal.SIGCONT)
                    self._signal(m, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                assert m.proc is not None
                m.proc.wait(10)


@contextmanager
def etcd_cluster(base: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
