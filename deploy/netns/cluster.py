"""NetnsCluster: the services of a compose file, each in a network namespace of its own.

    with NetnsCluster("deploy/docker-compose.yml", run_dir) as c:
        c.address("controller-1")            # "10.213.7.5"
        c.kill("controller-1")               # SIGKILL its process (no restart)
        c.stop("node-2"); c.start("node-2")  # like docker stop / start
        c.cut("node-3"); c.restore("node-3") # take its link down / up
        c.blackhole("controller-1", ["etcd-1", "etcd-2", "etcd-3"])   # packets dropped
        c.heal("controller-1", ["etcd-1", "etcd-2", "etcd-3"])        # both ways
        c.netem("etcd-2", delay_ms=100, jitter_ms=20, loss_pct=5); c.clear_netem("etcd-2")
        c.freeze("controller-1"); c.thaw("controller-1")             # SIGSTOP / SIGCONT

Everything created (namespaces, veths, the bridge, /etc/netns dirs, processes, fault rules
and delayers) is removed by close()/__exit__, after a failure too; frozen services are
thawed first. down() does the same after a crashed runner.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .compose import load_compose
from .errors import ClusterError
from .faults import Faults, Services
from .launch import Launcher, default_programs
from .leftovers import clear_stale, down, leftovers, write_state
from .network import Network
from .services import Processes

__all__ = ["NetnsCluster"]


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
        self.programs = dict(programs) if programs is not None else default_programs()
        self.supervise = supervise
        self.events: list[str] = []
        self.id = secrets.token_hex(3)
        self._net = Network(self.id)
        self.bridge = self._net.bridge
        self._launcher = Launcher(self.compose_path, self.run_dir, self.services,
                                  self.programs, self.namespace)
        self._procs = Processes(self.services, self._launcher, health_timeout=health_timeout,
                                stop_grace=stop_grace, save=self._write_state, note=self._note)
        self._faults = Faults(self.namespace, self._net.addresses, self.run_dir / "faults",
                              python=str(self.programs["python"]))

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

    @property
    def health_timeout(self) -> float:
        return self._procs.health_timeout

    @health_timeout.setter
    def health_timeout(self, value: float) -> None:
        self._procs.health_timeout = value

    @property
    def stop_grace(self) -> float:
        return self._procs.stop_grace

    @stop_grace.setter
    def stop_grace(self, value: float) -> None:
        self._procs.stop_grace = value

    @property
    def subnet(self) -> ipaddress.IPv4Network | None:
        return self._net.subnet

    @property
    def gateway(self) -> str:
        return self._net.gateway

    def namespace(self, service: str) -> str:
        return self._net.namespace(service)

    def address(self, service: str) -> str:
        """The service's IPv4 address (reachable from the host through the bridge)."""
        return self._net.addresses[service]

    def log_path(self, service: str) -> Path:
        return self._launcher.log_path(service)

    def logs(self, service: str, tail: int = 40) -> str:
        return self._launcher.logs(service, tail)

    def pid(self, service: str) -> int | None:
        """PID of the service's main process while it runs, else None."""
        return self._procs.pid(service)

    def pids(self, service: str) -> list[int]:
        """Every process inside the service's namespace."""
        return self._procs.pids(service)

    def up(self) -> None:
        """Create the network and start the selected services in dependency order."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        clear_stale(self.run_dir)
        for sub in ("logs", "volumes", "services", "bin"):
            (self.run_dir / sub).mkdir(exist_ok=True)
        self._launcher.write_shims()
        self._create_network()
        self._procs.start_in_order(self.selected)
        if self.supervise:
            self._procs.start_supervisor()

    def start(self, service: str, wait_healthy: bool = True) -> None:
        """Start a stopped service again (a no-op if it runs)."""
        self._procs.start(service, wait_healthy)

    def stop(self, service: str, timeout: float = 10.0) -> None:
        """Like `docker stop`: SIGTERM, then SIGKILL of everything in the namespace."""
        self._procs.stop(service, timeout)

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        """Like `docker kill`, but only the main process: what it started keeps running.

        The service counts as manually stopped (no restart) until start()."""
        self._procs.kill(service, sig)

    def send_signal(self, service: str, sig: int) -> None:
        """Signal the main process and nothing else (SIGSTOP/SIGCONT to freeze and thaw it);
        unlike kill(), the restart policy still applies if it dies."""
        self._procs.send_signal(service, sig)

    def cut(self, service: str) -> None:
        """A network cut: the service's link to the bridge goes down (processes keep running)."""
        self._net.set_link(service, up=False)
        self._note(f"{service}: link cut")

    def restore(self, service: str) -> None:
        self._net.set_link(service, up=True)
        self._note(f"{service}: link restored")

    def freeze(self, service: str) -> None:
        """SIGSTOP the main process (`docker pause` freezes the whole container instead).
        close() thaws whatever is still frozen."""
        self._procs.send_signal(service, signal.SIGSTOP)

    def thaw(self, service: str) -> None:
        self._procs.send_signal(service, signal.SIGCONT)

    def frozen(self) -> set[str]:
        """The services frozen with SIGSTOP and not thawed since."""
        return set(self._procs.frozen)

    def blackhole(self, a: Services, b: Services) -> None:
        """Packets between a and b (a service or a list of them, each) are dropped both
        ways, silently: no RST, no ICMP. Other traffic of both is untouched."""
        self._faults.blackhole(a, b)
        self._note(f"black hole {_names(a)} <-> {_names(b)}")

    def heal(self, a: Services, b: Services) -> None:
        """Undo blackhole(a, b)."""
        self._faults.heal(a, b)
        self._note(f"healed {_names(a)} <-> {_names(b)}")

    def heal_all(self) -> None:
        """Remove every black hole."""
        self._faults.heal_all(self._net.addresses)
        self._note("healed every black hole")

    def blackholed(self, service: str) -> list[str]:
        """The services whose packets `service` drops now (as its namespace lists them)."""
        return self._faults.blackholed(service)

    def netem(self, service: str, delay_ms: float = 0.0, jitter_ms: float = 0.0,
              loss_pct: float = 0.0) -> str:
        """Delay (± jitter) and/or drop a share of the service's outgoing packets, as tc
        netem on its interface does; replaces its earlier netem. Returns the mechanism
        ("tc netem", or "nfqueue" on a kernel without sch_netem; see faults.py)."""
        how = self._faults.netem(service, delay_ms, jitter_ms, loss_pct)
        self._note(f"{service}: netem delay {delay_ms:g}ms jitter {jitter_ms:g}ms "
                   f"loss {loss_pct:g}% ({how})")
        return how

    def clear_netem(self, service: str) -> None:
        self._faults.clear_netem(service)
        self._note(f"{service}: netem cleared")

    def netem_state(self, service: str) -> str:
        """What delays or drops the service's packets now ("" when nothing)."""
        return self._faults.netem_state(service)

    def host_path(self, service: str, path: str) -> Path:
        """Where a path inside the service (e.g. in one of its volumes) is on the host."""
        return Path(self._launcher.map_paths(service, [path])[0])

    def exec(self, service: str, argv: Sequence[str], timeout: float = 30.0,
             ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the service's namespace with the service's environment."""
        return self._launcher.run(service, argv, timeout)

    def check_health(self, service: str) -> bool:
        """One run of the service's health check (no check: its process is alive)."""
        return self._procs.check_health(service)

    def wait_healthy(self, services: Sequence[str], timeout: float | None = None) -> None:
        self._procs.wait_healthy(services, timeout)

    def close(self) -> None:
        """Stop everything and remove every namespace, link, file and process created.

        Services stop as `docker compose down` stops them: dependents first, each wave with
        SIGTERM and then, after stop_grace seconds, SIGKILL."""
        self._procs.stop_supervisor()
        with self._procs.lock:
            try:
                self._procs.thaw_all()
                with contextlib.suppress(ClusterError, OSError):
                    self._faults.close()
                self._procs.stop_all(self.selected)
            finally:
                if self.subnet is not None or self._procs.procs:
                    self._write_state()
                    down(self.run_dir, self.id)
                    with contextlib.suppress(OSError):
                        shutil.rmtree(self.run_dir / "bin")
                self._procs.reap()
            self._note("closed")

    def leftovers(self) -> list[str]:
        """What of this cluster still exists (empty after close())."""
        return leftovers(self.id, self.run_dir, self._procs.running_pids())

    # -- internals --

    def _note(self, what: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {what}"
        self.events.append(line)
        with contextlib.suppress(OSError), open(self.run_dir / "logs" / "events.log", "a") as f:
            f.write(line + "\n")

    def _write_state(self) -> None:
        write_state(self.run_dir, {
            "id": self.id, "bridge": self.bridge,
            "subnet": str(self.subnet) if self.subnet else None,
            "namespaces": [self.namespace(s) for s in self._net.addresses],
            "addresses": dict(self._net.addresses),
            "pgids": self._procs.pgids, "compose": str(self.compose_path),
            "runner": os.getpid()})

    def _create_network(self) -> None:
        self._write_state()  # first, so that down() finds a half-built network
        self._net.create_bridge(self.selected)
        self._write_state()
        self._net.create_namespaces(
            {s: self.services[s].hostname or s for s in self.selected})
        self._note(self._net.describe())


def _names(services: Services) -> str:
    return services if isinstance(services, str) else ",".join(services)
