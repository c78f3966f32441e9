"""Network faults between services: black holes, and netem's delay and loss.

Every rule lives inside a service's own network namespace, never in the root namespace, so
it goes when the namespace goes: close(), and down() after a crashed runner, remove them
with the namespaces. The state is the kernel's (iptables chains and qdiscs in the
namespaces) plus one pid file per delayer under the run dir, so a second process (the
`netns-cluster` CLI) sees and changes the same faults as the runner.

black hole   `blackhole(a, b)`: an iptables DROP in a's INPUT of every packet from b's
             address, and in b's INPUT of every packet from a's (chain VIR-BLACKHOLE). A
             packet either way crosses the bridge and vanishes: the sender gets no RST and
             no ICMP, and nothing fails locally either (a DROP in OUTPUT would make send()
             fail with EPERM, which a real black hole never does). ARP still resolves.
netem        `netem(svc, delay_ms, jitter_ms, loss_pct)`: the service's egress on eth0.
             With sch_netem in the kernel it is `tc qdisc replace dev eth0 root netem ...`.
             Without it (some cloud and microVM kernels), loss is an iptables `statistic`
             DROP and delay is delayq.py, a user-space delayer behind an NFQUEUE rule with
             --queue-bypass (chain VIR-NETEM): the effect on the wire is the same. Stopping
             the service ends its delayer with everything else in the namespace; the
             bypass then lets packets through undelayed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ClusterError

__all__ = ["BLACKHOLE_CHAIN", "NETEM_CHAIN", "Faults", "Netem", "pairs"]

BLACKHOLE_CHAIN = "VIR-BLACKHOLE"
NETEM_CHAIN = "VIR-NETEM"
DEV = "eth0"
QUEUE = 0
DELAYQ = Path(__file__).with_name("delayq.py")
READY_S = 5.0

Services = str | Sequence[str]


@dataclass(frozen=True)
class Netem:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ClusterError("netem: delay and jitter must be >= 0")
        if not 0 <= self.loss_pct <= 100:
            raise ClusterError("netem: loss_pct must be within 0..100")

    @property
    def empty(self) -> bool:
        return not (self.delay_ms or self.jitter_ms or self.loss_pct)

    def tc_args(self) -> list[str]:
        """The arguments after `netem` of `tc qdisc ... netem`."""
        out: list[str] = []
        if self.delay_ms or self.jitter_ms:
            out += ["delay", f"{self.delay_ms:g}ms"]
            if self.jitter_ms:
                out.append(f"{self.jitter_ms:g}ms")
        if self.loss_pct:
            out += ["loss", f"{self.loss_pct:g}%"]
        return out


def pairs(a: Services, b: Services) -> list[tuple[str, str]]:
    """Every (x, y) with x in a and y in b, x != y: a black hole between two groups."""
    left = [a] if isinstance(a, str) else list(a)
    right = [b] if isinstance(b, str) else list(b)
    return [(x, y) for x in left for y in right if x != y]


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def _starttime(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Faults:
    """Black holes and netem for the services of one cluster.

    `namespace(svc)` names a service's namespace, `addresses` maps services to their
    addresses (read when used: the network may be created after this object), and
    `state_dir` holds the delayers' pid files and logs."""

    def __init__(self, namespace: Callable[[str], str], addresses: Mapping[str, str],
                 state_dir: Path, python: str = sys.executable) -> None:
        self.namespace = namespace
        self.addresses = addresses
        self.state_dir = state_dir
        self.python = python
        self._tc_netem: bool | None = None  # whether the kernel has sch_netem
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- black holes --

    def blackhole(self, a: Services, b: Services) -> None:
        """Drop every packet between a and b, both ways (each may be a group)."""
        for x, y in pairs(a, b):
            self._drop_from(x, y)
            self._drop_from(y, x)

    def heal(self, a: Services, b: Services) -> None:
        """Undo blackhole(a, b); other black holes stay."""
        for x, y in pairs(a, b):
            self._undrop_from(x, y)
            self._undrop_from(y, x)

    def blackholed(self, service: str) -> list[str]:
        """The services whose packets `service` drops now (read from its namespace)."""
        out = self._iptables(service, "-S", BLACKHOLE_CHAIN, check=False).stdout
        by_addr = {addr: svc for svc, addr in self.addresses.items()}
        peers: list[str] = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[0] == "-A" and parts[2] == "-s":
                addr = parts[3].removesuffix("/32")
                peers.append(by_addr.get(addr, addr))
        return peers

    def heal_all(self, services: Iterable[str] | None = None) -> None:
        for svc in services if services is not None else list(self.addresses):
            self._iptables(svc, "-F", BLACKHOLE_CHAIN, check=False)

    def _drop_from(self, service: str, peer: str) -> None:
        self._ensure_chain(service, BLACKHOLE_CHAIN, "INPUT")
        rule = ["-s", f"{self.addresses[peer]}/32", "-j", "DROP"]
        if self._iptables(service, "-C", BLACKHOLE_CHAIN, *rule, check=False).returncode:
            self._iptables(service, "-A", BLACKHOLE_CHAIN, *rule)

    def _undrop_from(self, service: str, peer: str) -> None:
        rule = ["-s", f"{self.addresses[peer]}/32", "-j", "DROP"]
        while self._iptables(service, "-D", BLACKHOLE_CHAIN, *rule,
                             check=False).returncode == 0:
            pass

    # -- netem --

    def netem(self, service: str, delay_ms: float = 0.0, jitter_ms: float = 0.0,
              loss_pct: float = 0.0) -> str:
        """Delay (± jitter) and/or drop a share of the service's egress packets; replaces
        any earlier netem of the service. Returns the mechanism used ("tc netem" or
        "nfqueue")."""
        spec = Netem(delay_ms, jitter_ms, loss_pct)
        self.clear_netem(service)
        if spec.empty:
            return "none"
        if self._tc_netem is not False:
            proc = self._ns(service, ["tc", "qdisc", "replace", "dev", DEV, "root", "netem",
                                      *spec.tc_args()], check=False)
            if proc.returncode == 0:
                self._tc_netem = True
                return "tc netem"
            if "unknown" not in proc.stderr.lower() or self._tc_netem:
                raise ClusterError(f"tc netem on {service}: {proc.stderr.strip()}")
            self._tc_netem = False  # "Specified qdisc kind is unknown": no sch_netem
        self._ensure_chain(service, NETEM_CHAIN, "OUTPUT", "-o", DEV)
        if spec.loss_pct:
            self._iptables(service, "-A", NETEM_CHAIN, "-m", "statistic", "--mode", "random",
                           "--probability", f"{spec.loss_pct / 100:.6f}", "-j", "DROP")
        if spec.delay_ms or spec.jitter_ms:
            self._start_delayer(service, spec)
            self._iptables(service, "-A", NETEM_CHAIN, "-j", "NFQUEUE", "--queue-num",
                           str(QUEUE), "--queue-bypass")
        return "nfqueue"

    def clear_netem(self, service: str) -> None:
        if self._tc_netem is not False:
            self._ns(service, ["tc", "qdisc", "del", "dev", DEV, "root"], check=False)
        self._iptables(service, "-F", NETEM_CHAIN, check=False)  # first: nothing new queued
        self._stop_delayer(service)

    def netem_state(self, service: str) -> str:
        """What delays or drops the service's packets now, as the kernel lists it."""
        qdisc = self._ns(service, ["tc", "qdisc", "show", "dev", DEV], check=False).stdout
        rules = self._iptables(service, "-S", NETEM_CHAIN, check=False).stdout
        found = [line.strip() for line in qdisc.splitlines() if "netem" in line]
        found += [line for line in rules.splitlines() if line.startswith("-A")]
        if self._delayer_pid(service) is not None:
            found.append(f"delayer pid {self._delayer_pid(service)}")
        return "; ".join(found)

    def close(self) -> None:
        """End every delayer (rules and qdiscs go with their namespaces)."""
        for pid_file in self.state_dir.glob("*.delayq.pid"):
            self._stop_delayer(pid_file.name.removesuffix(".delayq.pid"))

    def pids(self) -> list[int]:
        """The delayers' process ids (for the runner's state file)."""
        out: list[int] = []
        for pid_file in self.state_dir.glob("*.delayq.pid"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                out.append(int(pid_file.read_text().split()[0]))
        return out

    def _pid_file(self, service: str) -> Path:
        return self.state_dir / f"{service}.delayq.pid"

    def _delayer_pid(self, service: str) -> int | None:
        try:
            pid_s, start_s = self._pid_file(service).read_text().split()[:2]
        except (OSError, ValueError):
            return None
        return int(pid_s) if _starttime(int(pid_s)) == int(start_s) else None

    def _start_delayer(self, service: str, spec: Netem) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self._pid_file(service)
        pid_file.unlink(missing_ok=True)
        log = self.state_dir / f"{service}.delayq.log"
        with open(log, "ab") as out:
            child = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(service), self.python, str(DELAYQ),
                 "--queue", str(QUEUE), "--delay-ms", f"{spec.delay_ms:g}",
                 "--jitter-ms", f"{spec.jitter_ms:g}", "--pid-file", str(pid_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._children[service] = child
        deadline = time.monotonic() + READY_S
        while self._delayer_pid(service) is None:
            if child.poll() is not None or time.monotonic() > deadline:
                self._stop_delayer(service)
                tail = log.read_text(errors="replace")[-500:]
                raise ClusterError(f"the delayer for {service} did not start: {tail}")
            time.sleep(0.02)

    def _stop_delayer(self, service: str) -> None:
        pid = self._delayer_pid(service)
        if pid is not None:
            _signal(pid, signal.SIGTERM)  # it releases what it holds, then exits
            deadline = time.monotonic() + 3.0
            while _starttime(pid) is not None and time.monotonic() < deadline:
                child = self._children.get(service)
                if child is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(0.05)
                else:
                    time.sleep(0.05)
            if _starttime(pid) is not None:
                _signal(pid, signal.SIGKILL)
        child = self._children.pop(service, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
        self._pid_file(service).unlink(missing_ok=True)

    # -- plumbing --

    def _ns(self, service: str, argv: Sequence[str], check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.namespace(service), *argv], check)

    def _iptables(self, service: str, *args: str, check: bool = True,
                  ) -> subprocess.CompletedProcess[str]:
        return self._ns(service, ["iptables", "-w", "5", *args], check)

    def _ensure_chain(self, service: str, chain: str, hook: str, *match: str) -> None:
        """Create `chain` in the service's namespace, jumped to first from `hook`."""
        self._iptables(service, "-N", chain, check=False)  # "already exists" is fine
        jump = [*match, "-j", chain]
        if self._iptables(service, "-C", hook, *jump, check=False).returncode:
            self._iptables(service, "-I", hook, "1", *jump)
