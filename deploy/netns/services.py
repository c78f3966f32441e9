"""The services' processes: starting them in dependency order, stop / kill / signal, health
checks, restart policies (applied by a supervisor thread) and the stop order at the end.

A service stopped or killed through this API is "manually stopped" and is not restarted, as
with `docker stop` / `docker kill`, until it is started again. A service frozen with SIGSTOP
is remembered until SIGCONT: stopping it thaws it after its SIGTERM, so nothing is ever left
stopped and a frozen process still gets to shut down cleanly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .compose import Service
from .errors import ClusterError
from .launch import Launcher
from .network import netns_pids

__all__ = ["Processes", "alive", "kill_pid"]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    started: float
    restarts: int = 0


class Processes:
    """The main process of each started service, and what is known of its health.

    `save` is called after each start (the state file records the process groups), `note`
    with each event worth logging."""

    def __init__(
        self,
        services: Mapping[str, Service],
        launcher: Launcher,
        *,
        health_timeout: float,
        stop_grace: float,
        save: Callable[[], None],
        note: Callable[[str], None],
    ) -> None:
        self.services = services
        self.launcher = launcher
        self.health_timeout = health_timeout
        self.stop_grace = stop_grace
        self._save = save
        self._note = note
        self.procs: dict[str, _Proc] = {}
        self.manual: set[str] = set()  # stopped or killed through the API: not restarted
        self.healthy: set[str] = set()
        self.frozen: set[str] = set()  # main process stopped with SIGSTOP, not yet SIGCONT
        self.pgids: list[int] = []
        self.lock = threading.RLock()
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None

    def pid(self, service: str) -> int | None:
        """PID of the service's main process while it runs, else None."""
        proc = self.procs.get(service)
        if proc is None or proc.popen.poll() is not None:
            return None
        return proc.popen.pid

    def pids(self, service: str) -> list[int]:
        """Every process inside the service's namespace."""
        return netns_pids(self.launcher.namespace(service))

    def running_pids(self) -> list[int]:
        """The main processes still running."""
        return [p.popen.pid for p in self.procs.values() if p.popen.poll() is None]

    # -- start, stop, signal --

    def start(self, service: str, wait_healthy: bool = True) -> None:
        with self.lock:
            self.manual.discard(service)
            if self.pid(service) is None:
                self._spawn(service)
        if wait_healthy:
            self.wait_healthy([service])

    def stop(self, service: str, timeout: float = 10.0) -> None:
        with self.lock:
            self.manual.add(service)
            self.healthy.discard(service)
            proc = self.procs.get(service)
            if proc is not None and proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                self._thaw(service)
                try:
                    proc.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self._kill_namespace(service)
            self._note(f"{service}: stopped")

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        with self.lock:
            self.manual.add(service)
            self.healthy.discard(service)
            proc = self.procs.get(service)
            if proc is not None and proc.popen.poll() is None:
                proc.popen.send_signal(sig)
                if sig == signal.SIGKILL:
                    proc.popen.wait(10)
                    self.frozen.discard(service)
            self._note(f"{service}: killed with {signal.Signals(sig).name}")

    def send_signal(self, service: str, sig: int) -> None:
        pid = self.pid(service)
        if pid is None:
            raise ClusterError(f"{service} is not running")
        kill_pid(pid, sig)
        if sig == signal.SIGSTOP:
            self.frozen.add(service)
        elif sig == signal.SIGCONT:
            self.frozen.discard(service)
        self._note(f"{service}: sent {signal.Signals(sig).name}")

    def thaw_all(self) -> None:
        """SIGCONT to every frozen service."""
        for service in list(self.frozen):
            self._thaw(service)

    def _thaw(self, service: str) -> None:
        if service in self.frozen:
            pid = self.pid(service)
            if pid is not None:
                kill_pid(pid, signal.SIGCONT)
                self._note(f"{service}: thawed (SIGCONT)")
            self.frozen.discard(service)

    def start_in_order(self, services: Sequence[str]) -> None:
        """Start the services as their depends_on conditions allow; wait until all are healthy."""
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
                                  if c == "service_healthy" and d not in self.healthy
                                  and d in self.procs})
                if not waiting:
                    time.sleep(0.1)
                else:
                    self.wait_healthy(waiting, max(1.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise ClusterError(f"could not start {pending} in time")
        self.wait_healthy([s for s in services], max(1.0, deadline - time.monotonic()))

    def stop_all(self, selected: Sequence[str]) -> None:
        """Stop as `docker compose down` does: dependents first, each wave with SIGTERM and
        then, after stop_grace seconds, SIGKILL of everything in its namespaces."""
        for wave in self._stop_waves(selected):
            running = [self.procs[s].popen for s in wave
                       if s in self.procs and self.procs[s].popen.poll() is None]
            for popen in running:
                popen.send_signal(signal.SIGTERM)
            for svc in wave:
                self._thaw(svc)
            deadline = time.monotonic() + self.stop_grace
            for popen in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(max(0.0, deadline - time.monotonic()))
            for svc in wave:
                self._kill_namespace(svc)

    def reap(self) -> None:
        """Wait (up to 5 s each) for the main processes to be gone."""
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)

    def _stop_waves(self, selected: Sequence[str]) -> list[list[str]]:
        """The started services, dependents before what they depend on."""
        left = [s for s in selected if s in self.procs]
        waves: list[list[str]] = []
        while left:
            wave = [s for s in left
                    if not any(s in self.services[o].depends_on for o in left if o != s)]
            wave = wave or list(left)  # a cycle: stop the rest together
            waves.append(wave)
            left = [s for s in left if s not in wave]
        return waves

    def _spawn(self, service: str) -> None:
        popen = self.launcher.spawn(service)
        self.frozen.discard(service)
        old = self.procs.get(service)
        self.procs[service] = _Proc(popen, time.monotonic(), old.restarts if old else 0)
        self.pgids.append(popen.pid)
        self._save()
        self._note(f"{service}: started (pid {popen.pid})")

    def _kill_namespace(self, service: str) -> None:
        proc = self.procs.get(service)
        for _ in range(3):
            pids = self.pids(service)
            if proc is not None and proc.popen.poll() is None:
                pids.append(proc.popen.pid)
            if not pids:
                break
            for pid in pids:
                kill_pid(pid, signal.SIGKILL)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(5)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(alive(p) for p in pids):
                time.sleep(0.02)

    # -- health --

    def check_health(self, service: str) -> bool:
        hc = self.services[service].healthcheck
        if self.pid(service) is None:
            return False
        if hc is None:
            return True
        try:
            return self.launcher.run(service, hc.argv, timeout=hc.timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def completed(self, service: str) -> bool:
        """A one-shot service (restart "no") that exited 0: done, as compose sees it."""
        proc = self.procs.get(service)
        return (proc is not None and self.services[service].restart == "no"
                and proc.popen.poll() == 0)

    def wait_healthy(self, services: Sequence[str], timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.health_timeout)
        pending = [s for s in services if s not in self.healthy and not self.completed(s)]
        while pending:
            self._fail_if_dead(pending)
            with ThreadPoolExecutor(max_workers=len(pending)) as pool:
                results = dict(zip(pending, pool.map(self.check_health, pending), strict=True))
            for svc, ok in results.items():
                if ok:
                    self.healthy.add(svc)
                    self._note(f"{svc}: healthy")
            pending = [s for s in pending if not results[s] and not self.completed(s)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError("not healthy in time: " + "; ".join(
                    f"{s} (log tail:\n{self.launcher.logs(s, 10)})" for s in pending))
            time.sleep(min(self._poll_interval(s) for s in pending))

    def _poll_interval(self, service: str) -> float:
        hc = self.services[service].healthcheck
        # Fast polling at start-up (compose's start_interval), never slower than 1 s here.
        return min(hc.start_interval, 1.0) if hc else 0.2

    def _fail_if_dead(self, services: Sequence[str]) -> None:
        for svc in services:
            proc = self.procs.get(svc)
            if proc is not None and proc.popen.poll() is not None and not self.completed(svc):
                raise ClusterError(f"{svc} exited with code {proc.popen.returncode} while "
                                   f"starting; log tail:\n{self.launcher.logs(svc)}")

    def _condition_met(self, dep: str, condition: str) -> bool:
        proc = self.procs.get(dep)
        if proc is None:
            return False
        if condition == "service_healthy":
            return dep in self.healthy
        if condition == "service_completed_successfully":
            return proc.popen.poll() == 0
        return True

    # -- restart policies --

    def start_supervisor(self) -> None:
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name="netns-cluster-supervisor")
        self._supervisor.start()

    def stop_supervisor(self) -> None:
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join(5)

    def _restart_wanted(self, service: str, code: int) -> bool:
        policy = self.services[service].restart
        if service in self.manual or policy == "no":
            return False
        if policy.startswith("on-failure"):
            _, _, limit = policy.partition(":")
            proc = self.procs[service]
            return code != 0 and (not limit or proc.restarts < int(limit))
        return policy in ("always", "unless-stopped")

    def _supervise(self) -> None:
        """Restart policies: a service whose process ended is started again after a back-off
        that doubles from 0.1 s (Docker's), reset once it has run for 10 s."""
        due: dict[str, float] = {}
        while not self._closing.wait(0.2):
            with self.lock:
                for svc, proc in list(self.procs.items()):
                    code = proc.popen.poll()
                    if code is None or not self._restart_wanted(svc, code):
                        due.pop(svc, None)
                        continue
                    now = time.monotonic()
                    if svc not in due:
                        self.healthy.discard(svc)
                        ran = now - proc.started
                        if ran > 10:
                            proc.restarts = 0
                        delay = min(0.1 * 2 ** proc.restarts, 10.0)
                        due[svc] = now + delay
                        self._note(f"{svc}: exited with {code}; restart in {delay:.1f}s")
                    elif now >= due.pop(svc):
                        proc.restarts += 1
                        self._spawn(svc)
                        self.procs[svc].restarts = proc.restarts
