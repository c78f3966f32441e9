"""The compose cluster under faults: the netns cluster (FailCluster from the integration
helpers: API with controller failover, the nodes' run dirs), the checker wired to it, and the
workload of real guests (tests/guests/hb_beat.c, a beat every 200 ms), HA and not.

    with fault_cluster(work_dir) as fh:
        names = fh.workload("t1", ha=3, plain=3)     # created, acknowledged, Running
        ...inject faults (injector.py)...
        fh.retire(names)                             # stopped, then deleted

Nothing here kills a process: faults go through the runner, which signals only the
processes it started (by the pid it recorded).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import rules
import worker_view
from checker import Checker, Scan
from etcd_view import EtcdView, wait_readable
from failure_util import COMPOSE, GUESTS, FailCluster, cluster_up, compile_guest
from viridian.v1 import controller_pb2 as cpb
from worker_view import Worker

__all__ = ["IMAGE", "FaultCluster", "fault_cluster", "needs"]

IMAGE = "hb"
BEAT_MS = 200
RUN_TIMEOUT_S = 30.0


def needs() -> str | None:
    """Why the fault suite cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class FaultCluster:
    def __init__(self, fc: FailCluster) -> None:
        self.fc = fc
        self.c = fc.c
        self.api = fc.api
        self.view = EtcdView([f"{self.c.address(e)}:2379" for e in fc.etcds],
                             credentials=fc.etcd_tls())
        self.run_dirs = {n: fc.run_dir(n) for n in fc.nodes}
        self.checker = Checker(self.view.snapshot, self.workers, fc.nodes)
        self._serial = 0

    def close(self) -> None:
        self.checker.stop()
        self.view.close()

    def workers(self) -> list[Worker]:
        return worker_view.scan(self.run_dirs)

    # -- who is who --

    def service_of_host(self, host: str) -> str:
        """The service whose hostname (or name) is `host` ("" if none)."""
        for svc in self.c.selected:
            if host in (svc, self.c.services[svc].hostname):
                return svc
        return ""

    def controller_of(self, identity: str) -> str:
        """The controller service of a leader identity "<hostname>-<pid>" ("" if none). The
        hostname is the host's (a network namespace has no hostname of its own); the pid is
        the runner's main process (ip netns exec and the shim exec into the controller)."""
        pid = identity.rsplit("-", 1)[-1]
        return next((s for s in self.fc.controllers if pid and pid == str(self.c.pid(s))), "")

    def leader(self) -> str:
        """The controller service named by /viridian/leader ("" if none)."""
        return self.controller_of(wait_readable(self.view, 10).leader)

    def sessions(self) -> dict[str, str]:
        """Node -> the controller service holding its session (its lease key's value, the
        controller's advertised address)."""
        snap = wait_readable(self.view, 10)
        return {n: self.service_of_host(v.split(":")[0]) for n, v in snap.node_leases.items()}

    def session_holder(self, node: str) -> str:
        return self.sessions().get(node, "")

    def steer_sessions(self, controller: str, timeout: float = 30.0) -> str:
        """Make `controller` hold every agent's session (so that a fault of it matters):
        the other controllers holding sessions are stopped (SIGTERM, as `docker stop`) until
        the agents have moved, then started again. Returns what was done ("" if nothing)."""
        others = sorted({s for s in self.sessions().values() if s and s != controller})
        if not others:
            return ""
        for o in others:
            self.c.stop(o, timeout=5)
        deadline = time.monotonic() + timeout
        try:
            while set(self.sessions().values()) != {controller} or \
                    len(self.sessions()) < len(self.fc.nodes):
                if time.monotonic() > deadline:
                    raise AssertionError(f"sessions not on {controller} after "
                                         f"{timeout:g}s: {self.sessions()}")
                time.sleep(0.1)
        finally:
            for o in others:
                self.c.start(o)
        return f"sessions steered to {controller} (stop + start of {', '.join(others)})"

    def bound_node(self, name: str) -> str:
        b = wait_readable(self.view, 10).bindings.get(name)
        return b.node if b else ""

    # -- the workload --

    def names(self, prefix: str, count: int) -> list[str]:
        out = []
        for _ in range(count):
            self._serial += 1
            out.append(f"{prefix}-{self._serial:03d}")
        return out

    def create(self, names: Sequence[str], ha: bool) -> list[str]:
        """Create each; those acknowledged (a reply, or ALREADY_EXISTS after a retry of
        ours) are expected by the checker from then on. Returns those."""
        done: list[str] = []
        for name in names:
            try:
                self.api.create(name, IMAGE, [str(BEAT_MS)], ha=ha, strategy="spread")
            except grpc.RpcError as err:
                if not (isinstance(err, grpc.Call)
                        and err.code() == grpc.StatusCode.ALREADY_EXISTS):
                    continue  # in doubt: not acknowledged
            self.checker.expect(name, ha)
            done.append(name)
        return done

    def wait_running(self, names: Sequence[str], timeout: float = RUN_TIMEOUT_S) -> None:
        """Every one Running in etcd with its live worker on its node."""
        def running(s: Scan) -> bool:
            snap = s.snap
            if snap is None:
                return False
            for n in names:
                p, b = snap.partitions.get(n), snap.bindings.get(n)
                if p is None or b is None or rules.phase(p) != "RUNNING":
                    return False
                if not any(w.name == n and w.node == b.node and w.epoch == b.revision
                           for w in s.workers):
                    return False
            return True

        if self.checker.wait_scan(running, time.monotonic(), timeout) is None:
            raise AssertionError(f"not all Running within {timeout:g}s: {self.phases(names)}"
                                 f"\n{self.fc.tails(n=15)}")

    def workload(self, prefix: str, ha: int, plain: int) -> list[str]:
        names = self.create(self.names(f"{prefix}-ha", ha), ha=True)
        names += self.create(self.names(f"{prefix}-pl", plain), ha=False)
        self.wait_running(names)
        return names

    def phases(self, names: Sequence[str]) -> dict[str, str]:
        snap = wait_readable(self.view, 10)
        return {n: rules.phase(snap.partitions[n]) if n in snap.partitions else "absent"
                for n in names}

    def retire(self, names: Sequence[str], timeout: float = 20.0) -> None:
        """Stop each (desired Off), wait until none is bound, then delete: no worker is ever
        orphaned by the clean-up itself. The checker stops expecting them first."""
        for name in names:
            self.checker.forget(name)
            with contextlib.suppress(grpc.RpcError):
                self.api.call("StopPartition", cpb.StopPartitionRequest(name=name))
        deadline = time.monotonic() + timeout
        left = list(names)
        while left and time.monotonic() < deadline:
            snap = wait_readable(self.view, 10)
            left = [n for n in left if n in snap.bindings
                    and rules.phase(snap.partitions[n]) not in ("OFF", "LOST", "FAILED")]
            time.sleep(0.2)
        for name in names:
            with contextlib.suppress(grpc.RpcError):
                self.api.delete(name)

    # -- back to the baseline --

    def restore(self) -> None:
        """The faults' undo (FailCluster.undo_faults), and every node uncordoned."""
        self.fc.undo_faults()
        snap = wait_readable(self.view, 30)
        for name, node in snap.nodes.items():
            if node.spec.cordoned:
                with contextlib.suppress(grpc.RpcError):
                    self.api.call("UncordonNode", cpb.CordonNodeRequest(name=name))


@contextlib.contextmanager
def fault_cluster(work: Path, compose: Path = COMPOSE) -> Iterator[FaultCluster]:
    """The compose cluster up, the guest image pushed, the checker scanning."""
    work.mkdir(parents=True, exist_ok=True)
    hb = compile_guest(GUESTS / "hb_beat.c", work / "hb")
    gen = cluster_up(work / "cluster", compose, images={IMAGE: hb})
    fc = next(gen)
    fh = FaultCluster(fc)
    try:
        fh.checker.start()
        yield fh
    finally:
        fh.close()
        with contextlib.suppress(StopIteration):
            next(gen)
