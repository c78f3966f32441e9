"""Integration helpers: real etcd, a real controller and real agents on loopback.

Guests are compiled from tests/guests/*.c with `gcc -static` once per session. A cluster is
controller.embedded.Cluster (what `viridian up` runs) on a free port and a fresh data dir;
its finalizer stops it and fails the test run if any process of it is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import controller_pb2_grpc as cgrpc
from viridian.v1 import types_pb2 as pb

from controller.embedded import Cluster, open_channel, wait_serving
from controller.etcd_server import free_port

# Clusters save their CLI credentials here (not in the user's ~/.config): `viridian up`'s
# Cluster.start writes them and the CLI children inherit the variable.
os.environ.setdefault("VIRIDIAN_CONFIG_DIR", tempfile.mkdtemp(prefix="vit-config-"))

REPO = Path(__file__).resolve().parents[2]
GUESTS = REPO / "tests" / "guests"
LEASE_TTL = 2
NODE_VCPUS = 4
NODE_MEMORY = 8 << 30
WAIT_S = 20.0

T = TypeVar("T")

# What each compiled guest is built from: name -> (source, extra gcc flags).
GUEST_BUILDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "hello": ("hello.c", ()),
    "hello32": ("hello.c", ("-m32",)),
    "threads": ("threads.c", ("-pthread",)),
    "sleep": ("it_sleep.c", ()),
    "true": ("it_true.c", ()),
    "counter": ("sr_counter.c", ()),
    "checksum": ("sr_checksum.c", ("-pthread",)),
    "checksum32": ("sr_checksum.c", ("-pthread", "-m32")),
}


# -- guests ------------------------------------------------------------------------------

def compile_guest(source: Path, out: Path, *flags: str, static: bool = True) -> Path:
    cmd = ["gcc", "-O2", *(["-static"] if static else []), *flags, "-o", str(out), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return out


# -- subprocess CLI ----------------------------------------------------------------------

@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def run_cli(address: str, *args: str, timeout: float = 60.0,
            insecure: bool = False) -> CliResult:
    """`viridian --controller ADDRESS ARGS…` as a child process (with --insecure for the
    plaintext compose cluster)."""
    flags = ["--insecure"] if insecure else []
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "--controller", address, *flags, *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_cli_error(res: CliResult, *needles: str) -> None:
    """Exit 1, exactly one `error: …` line on stderr, no traceback, mentioning needles."""
    assert res.code == 1, str(res)
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), str(res)
    assert "Traceback" not in res.err, str(res)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


# -- waiting -----------------------------------------------------------------------------

def wait_for(probe: Callable[[], T | None], what: str, timeout: float = WAIT_S,
             interval: float = 0.05) -> T:
    """Poll probe until it returns something truthy; fail naming what after timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def phase_name(phase: int) -> str:
    return pb.PartitionPhase.Name(phase).removeprefix("PARTITION_PHASE_")


def wait_phase(stub: cgrpc.ControllerStub, name: str, *phases: int,
               timeout: float = WAIT_S) -> pb.Partition:
    last: list[pb.Partition] = []

    def probe() -> pb.Partition | None:
        part = stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=5)
        last[:] = [part]
        return part if part.status.phase in phases else None

    try:
        return wait_for(probe, f"{name} in {[phase_name(p) for p in phases]}", timeout)
    except AssertionError as err:
        status = last[0].status if last else None
        raise AssertionError(f"{err}; status: {status}") from None


def node_state(stub: cgrpc.ControllerStub, name: str) -> int:
    """The node's state; UNSPECIFIED while it has not registered yet."""
    try:
        return int(stub.GetNode(cpb.GetNodeRequest(name=name), timeout=5).status.state)
    except grpc.RpcError as err:
        if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.NOT_FOUND:
            return pb.NODE_STATE_UNSPECIFIED
        raise


def wait_node(stub: cgrpc.ControllerStub, name: str, state: int,
              timeout: float = WAIT_S) -> None:
    wait_for(lambda: node_state(stub, name) == state,
             f"node {name} {pb.NodeState.Name(state)}", timeout)


# -- processes ---------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int, start: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X") and st[2] == start


class ProcessRecord:
    """The processes a test started: their pids with start times (so a reused pid is never
    mistaken for ours), recorded as they appear, with their descendants. A test kills only
    what is in here, never what merely looks similar (an address in another cluster's
    command line once matched ours and its agents were killed)."""

    def __init__(self) -> None:
        self.known: dict[int, int] = {}  # pid -> start time

    def add(self, pid: int) -> None:
        st = _proc_stat(pid)
        if st is not None:
            self.known.setdefault(pid, st[2])

    def add_tree(self, root: int) -> None:
        """root and every live descendant of it now."""
        self.add(root)
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                st = _proc_stat(int(entry.name))
                if st is not None:
                    children.setdefault(st[1], []).append(int(entry.name))
        todo = [root]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in self.known:
                    self.add(child)
                    todo.append(child)

    def alive(self) -> list[tuple[int, str]]:
        return [(pid, _cmdline(pid)) for pid, start in self.known.items()
                if _alive(pid, start)]


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def processes_under(data_dir: Path) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes working inside data_dir, or naming it (or a path
    inside it) as an argument: data_dir is a fresh mkdtemp of the test's, so nothing else
    can match. Path boundaries are respected (/tmp/vit-a is not /tmp/vit-ab)."""
    root = str(data_dir)
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = os.readlink(entry / "cwd") if os.access(entry / "cwd", os.R_OK) else ""
        except OSError:
            continue
        paths = [cwd, *args, *(a.split("=", 1)[1] for a in args if "=" in a)]
        if any(p == root or p.startswith(root + "/") for p in paths):
            found.append((pid, " ".join(args).strip()))
    return found


def kill_all(procs: Iterable[tuple[int, str]]) -> None:
    for pid, _ in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def worker_pid(data_dir: Path, node: str, partition: str) -> int | None:
    """The pid of a live worker for partition on node, from its run dir, else None."""
    pid_file = data_dir / "agents" / node / "workers" / "partitions" / partition / "pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError, IndexError):
        return None
    return None if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X") else pid


# -- cluster -----------------------------------------------------------------------------

class ClusterHandle:
    """A running embedded cluster plus ways to talk to it and to break it."""

    def __init__(self, data_dir: Path, nodes: int = 2,
                 controller_flags: tuple[str, ...] = (), lease_ttl: int = LEASE_TTL) -> None:
        self.data_dir = data_dir
        self.address = f"127.0.0.1:{free_port()}"
        self.cluster = Cluster(data_dir, nodes, self.address, lease_ttl=lease_ttl,
                               node_vcpus=NODE_VCPUS, node_memory=NODE_MEMORY,
                               agent_listen=f"127.0.0.1:{free_port()}",
                               controller_flags=controller_flags)
        self.channel: grpc.Channel | None = None

    @property
    def stub(self) -> cgrpc.ControllerStub:
        assert self.channel is not None
        return cgrpc.ControllerStub(self.channel)

    def start(self) -> None:
        self.cluster.start()
        self.channel = open_channel(self.address, self.cluster.ca_pem(),
                                    self.cluster.admin_token())
        for name in self.cluster.agents:
            wait_node(self.stub, name, pb.NODE_STATE_READY)

    def cli(self, *args: str, timeout: float = 60.0) -> CliResult:
        return run_cli(self.address, *args, timeout=timeout)

    def push(self, name: str, path: Path) -> None:
        res = self.cli("image", "push", name, str(path))
        assert res.code == 0, str(res)

    def log_tail(self, part: str, lines: int = 40) -> str:
        path = self.data_dir / "logs" / f"{part}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {path})"

    # -- agents --
    def kill_agent(self, name: str) -> None:
        proc = self.cluster.agents[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart_agent(self, name: str) -> None:
        """Start agent NAME again with the same name and run dir (as Cluster.start does)."""
        assert self.cluster.agents[name].poll() is not None, f"agent {name} still runs"
        self.cluster.agents[name] = self.cluster._cli(
            *self.cluster.agent_args(name, NODE_VCPUS, NODE_MEMORY),
            log=self.data_dir / "logs" / f"{name}.log",
        )

    # -- controller --
    def kill_controller(self) -> None:
        assert self.cluster.controller is not None
        self.cluster.controller.send_signal(signal.SIGKILL)
        self.cluster.controller.wait(10)

    def start_controller(self) -> None:
        assert self.cluster.etcd is not None
        log = self.data_dir / "logs" / "controller.log"
        self.cluster.controller = self.cluster._cli(*self.cluster.controller_args(), log=log)
        wait_serving(self.address, self.cluster.controller, log, self.cluster.ca_pem())

    def stop(self) -> list[tuple[int, str]]:
        """Stop everything; return (and kill) whatever of ours was left behind."""
        if self.channel is not None:
            self.channel.close()
        ours = ProcessRecord()
        for proc in self._started():
            ours.add_tree(proc.pid)
        try:
            self.cluster.stop()
        finally:
            # Even if stop() raised half-way (it once did, on an import error in the
            # runtime), nothing of this cluster may outlive the test session.
            for proc in self._started():
                if proc.poll() is None:
                    proc.kill()
        # Processes may take a moment to be reaped after their parent went.
        deadline = time.monotonic() + 5.0
        left = ours.alive() + processes_under(self.data_dir)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = ours.alive() + processes_under(self.data_dir)
        kill_all(left)
        return left

    def _started(self) -> list[subprocess.Popen[bytes]]:
        procs = [*self.cluster.agents.values()]
        if self.cluster.controller is not None:
            procs.append(self.cluster.controller)
        if self.cluster.etcd is not None and self.cluster.etcd.proc is not None:
            procs.append(self.cluster.etcd.proc)
        return procs


def short_tmp_dir(prefix: str) -> Path:
    # Short: workers keep unix sockets under the data dir (108-byte path limit).
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")).resolve()


def running_cluster(prefix: str, images: dict[str, Path],
                    controller_flags: tuple[str, ...] = (),
                    lease_ttl: int = LEASE_TTL) -> Iterator[ClusterHandle]:
    """Start a cluster, push images (name -> path), yield it, stop it, check for leftovers."""
    data_dir = short_tmp_dir(prefix)
    handle = ClusterHandle(data_dir, controller_flags=controller_flags, lease_ttl=lease_ttl)
    try:
        handle.start()
        for name, path in images.items():
            handle.push(name, path)
        yield handle
    finally:
        left = handle.stop()
        if not left:
            shutil.rmtree(data_dir, ignore_errors=True)
    assert not left, f"processes left behind by the cluster in {data_dir}: {left}"


def partition_names(parts: Iterable[pb.Partition]) -> list[str]:
    return [p.name for p in parts]


def load_json(text: str) -> object:
    return json.loads(text)
