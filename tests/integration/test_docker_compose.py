"""deploy/docker-compose.yml under the real Docker engine.

The images are built here without a registry (deploy/docker_images.py: a debootstrapped
Debian base, the project pip-installed from the build context), tagged by content hash so an
unchanged tree builds nothing. The cluster comes up under a project name of its own, every
health check goes green, a partition made through the CLI on the published controller port
(127.0.0.1 only) fails over when the agent container running it is killed, and `down -v`
leaves no container, network or volume of the project behind.

It needs root, docker (with dockerd: started here when installed but not running, and
stopped again) and docker-compose v1 or `docker compose` v2; it skips, saying so, only when
they are not installed. `.ci/run` installs them (docker.io docker-compose debootstrap).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from itutil import CliResult, run_cli, wait_for

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
sys.path.insert(0, str(REPO / "deploy"))

import docker_images  # noqa: E402

NODES = ("node-1", "node-2", "node-3")
SERVICES = ("etcd-1", "etcd-2", "etcd-3", "controller-1", "controller-2", *NODES)
# The compose file's controllers run with --lease-ttl 3: a lost node is noticed within a few
# seconds; the rest is for two busy cores.
FAILOVER_S = 60.0


def _compose_tools() -> list[list[str]]:
    """The compose commands installed: v2 (`docker compose`) and/or v1 (`docker-compose`)."""
    tools: list[list[str]] = []
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        tools.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        tools.append(["docker-compose"])
    return tools


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the Docker test needs root (dockerd, docker import)"
    for tool in ("docker", "dockerd", "debootstrap", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install docker.io docker-compose debootstrap)"
    if not _compose_tools():
        return "neither docker-compose (v1) nor `docker compose` (v2) is installed"
    return None


pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _docker_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL).returncode == 0


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running Docker engine: the one already there, or one started (and stopped) here."""
    if _docker_up():
        yield
        return
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        try:
            wait_for(lambda: proc.poll() is None and _docker_up(), "dockerd answering", 60,
                     interval=0.5)
        except AssertionError:
            raise AssertionError(f"dockerd did not start:\n{log.read_text()[-3000:]}") from None
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_subnet() -> str:
    """A 172.29.N.0/24 no interface, route or Docker network of this machine uses
    (172.29.0.0/24, the compose file's default, when it is free)."""
    used = subprocess.run(["ip", "-o", "-4", "route", "show", "table", "all"],
                          capture_output=True, text=True, timeout=30).stdout
    taken: list[ipaddress.IPv4Network] = []
    for word in used.split():
        if word[:1].isdigit() and "/" in word:
            try:
                taken.append(ipaddress.IPv4Network(word, strict=False))
            except ValueError:
                continue
    ids = docker("network", "ls", "-q").split()
    if ids:
        out = docker("network", "inspect", "--format",
                     "{{range .IPAM.Config}}{{.Subnet}} {{end}}", *ids)
        taken += [ipaddress.IPv4Network(s, strict=False) for s in out.split() if "." in s]
    for n in range(256):
        net = ipaddress.IPv4Network(f"172.29.{n}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise AssertionError("no free 172.29.N.0/24 subnet")


class Project:
    """One compose project: `compose -p NAME -f deploy/docker-compose.yml …`."""

    def __init__(self, tool: list[str], name: str, env: dict[str, str]) -> None:
        self.tool = tool
        self.name = name
        self.env = {**os.environ, **env}

    def compose(self, *args: str, timeout: float = 300, check: bool = True,
                ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.tool, "-p", self.name, "-f", str(COMPOSE), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(self.tool)} {' '.join(args)} "
                                 f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                                 f"{self.logs()}")
        return proc

    def container(self, service: str) -> str:
        ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}",
                     "--filter", f"label=com.docker.compose.service={service}").split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def health(self, service: str) -> str:
        return docker("inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}"
                      "{{else}}{{.State.Status}}{{end}}", self.container(service)).strip()

    def logs(self, tail: int = 15) -> str:
        proc = subprocess.run([*self.tool, "-p", self.name, "-f", str(COMPOSE), "logs",
                               "--no-color", f"--tail={tail}"], capture_output=True, text=True,
                              timeout=60, env=self.env, stdin=subprocess.DEVNULL)
        return proc.stdout[-6000:]

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of the project that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        left = [f"container {c}" for c in docker("ps", "-aq", "--filter", label).split()]
        nets = set(docker("network", "ls", "-q", "--filter", label).split())
        nets |= {n for n in docker("network", "ls", "--format", "{{.Name}}").split()
                 if n.startswith(self.name + "_")}
        vols = set(docker("volume", "ls", "-q", "--filter", label).split())
        vols |= {v for v in docker("volume", "ls", "--format", "{{.Name}}").split()
                 if v.startswith(self.name + "_")}
        return left + [f"network {n}" for n in sorted(nets)] + [f"volume {v}" for v in
                                                                 sorted(vols)]


def test_compose_file_is_valid_for_every_installed_compose() -> None:
    """`config` accepts the file under v1 and v2 (whichever are installed) with the defaults:
    fixed subnet, ports on 127.0.0.1 only."""
    for tool in _compose_tools():
        proc = subprocess.run([*tool, "-p", "viridian", "-f", str(COMPOSE), "config"],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{tool}: {proc.stderr}"
        config = yaml.safe_load(proc.stdout)
        subnets = [c["subnet"] for c in config["networks"]["viridian"]["ipam"]["config"]]
        assert subnets == ["172.29.0.0/24"], (tool, subnets)
        published = []
        for name, svc in config["services"].items():
            for port in svc.get("ports", []):
                # v1 prints "127.0.0.1:50051:50051/tcp", v2 {host_ip: 127.0.0.1, ...}.
                host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
                assert host_ip == "127.0.0.1", (tool, name, port)
                published.append(name)
        assert published == ["controller-1", "controller-2"], (tool, published)


def _cli(address: str, creds: list[str], *args: str, timeout: float = 30) -> CliResult:
    return run_cli(address, *creds, *args, timeout=timeout)


def _partition(address: str, creds: list[str], name: str) -> dict[str, object] | None:
    res = _cli(address, creds, "get", name, "-o", "json")
    if res.code != 0:
        return None
    data: dict[str, object] = json.loads(res.out)
    return data


def _node_states(address: str, creds: list[str]) -> dict[str, str]:
    res = _cli(address, creds, "nodes", "-o", "json")
    if res.code != 0:
        return {}
    return {n["name"]: n["status"]["state"].removeprefix("NODE_STATE_")
            for n in json.loads(res.out)}


@pytest.mark.timeout(1500)
def test_compose_cluster_under_docker(dockerd: None, guests: dict[str, Path],
                                      tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    t = time.monotonic()
    tag = docker_images.build_all()
    timings["images (build or reuse)"] = time.monotonic() - t

    tool = _compose_tools()[-1]  # docker-compose v1 when installed: what Debian ships
    ports = (_free_port(), _free_port())
    project = Project(tool, f"vit{uuid.uuid4().hex[:10]}", {
        "VIRIDIAN_IMAGE": tag, "VIRIDIAN_SUBNET": _free_subnet(),
        "VIRIDIAN_PORT_1": str(ports[0]), "VIRIDIAN_PORT_2": str(ports[1]),
    })
    address = f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    try:
        t = time.monotonic()
        project.compose("up", "-d", "--no-build", timeout=400)
        timings["up -d"] = time.monotonic() - t

        # Every long-running service healthy; the one-shot certs service exited 0.
        def all_healthy() -> bool:
            return all(project.health(s) == "healthy" for s in SERVICES)

        try:
            wait_for(all_healthy, "every service healthy", 120, interval=1.0)
        except AssertionError:
            states = {s: project.health(s) for s in SERVICES}
            raise AssertionError(f"health {states}\n{project.logs()}") from None
        timings["all healthy"] = time.monotonic() - t
        certs = docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                       project.container("certs")).split()
        assert certs == ["exited", "0"], certs

        # Published on 127.0.0.1 only.
        for svc, port in (("controller-1", ports[0]), ("controller-2", ports[1])):
            bound = docker("port", project.container(svc), "50051/tcp").split()
            assert bound == [f"127.0.0.1:{port}"], (svc, bound)

        admin = tmp_path / "admin"
        docker("cp", f"{project.container('controller-1')}:/pki/admin", str(admin))
        creds = ["--ca", str(admin / "ca.pem"), "--token-file", str(admin / "token")]
        wait_for(lambda: all(_node_states(address, creds).get(n) == "READY" for n in NODES),
                 "3 nodes Ready", 60, interval=0.5)

        res = _cli(address, creds, "image", "push", "sleep", str(guests["sleep"]), timeout=60)
        assert res.code == 0, str(res)
        res = _cli(address, creds, "create", "ha-1", "--ha", "--image", "sleep", "--", "3600")
        assert res.code == 0, str(res)

        def running(not_on: str = "") -> dict[str, object] | None:
            part = _partition(address, creds, "ha-1")
            status = part.get("status", {}) if part else {}
            assert isinstance(status, dict)
            ok = (status.get("phase") == "PARTITION_PHASE_RUNNING"
                  and status.get("node") not in ("", None, not_on))
            return status if ok else None

        first = wait_for(running, "ha-1 Running", 60, interval=0.5)
        node = str(first["node"])

        # The agent container running it is killed (and kept down: its restart policy off,
        # as if its host were gone): the HA partition is started on another agent.
        victim = project.container(node)
        docker("update", "--restart=no", victim)
        t = time.monotonic()
        docker("kill", victim)
        try:
            moved = wait_for(lambda: running(not_on=node), f"ha-1 Running off {node}",
                             FAILOVER_S, interval=0.5)
        except AssertionError:
            raise AssertionError(f"{_partition(address, creds, 'ha-1')}\n{project.logs()}"
                                 ) from None
        timings["kill -> running elsewhere"] = time.monotonic() - t
        assert moved["node"] in NODES and moved["node"] != node
        assert int(str(moved.get("epoch", 0))) > int(str(first.get("epoch", 0))), (first, moved)
        assert _node_states(address, creds).get(node) == "NOT_READY"
    finally:
        t = time.monotonic()
        down = project.compose("down", "-v", "--remove-orphans", "--timeout", "5",
                               timeout=300, check=False)
        timings["down -v"] = time.monotonic() - t
        print("\n" + "\n".join(f"{k:>28}: {v:6.1f}s" for k, v in timings.items()))
    assert down.returncode == 0, down.stderr
    assert project.leftovers() == []
