"""Faults of the infrastructure: kill -9 and SIGSTOP/SIGCONT of controllers (the leader, or
controller-1, which every agent and client lists first), agents and etcd members (etcd-1,
listed first, too); black holes between a controller and every etcd member, an agent and the
controller holding its session, an etcd member and the other members; netem delay or loss
on a service's egress; a rolling restart of every etcd member. Each maker takes the cluster,
the seeded random source and the hold time, and returns a Fault."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

from fault import Fault
from harness import FaultCluster

__all__ = ["blackhole_agent_controller", "blackhole_controller_etcd",
           "blackhole_etcd_member", "controller_etcd_blackhole", "netem", "process",
           "rolling_etcd_restart"]

Maker = Callable[[FaultCluster, random.Random, float], Fault]


def _controller(fh: FaultCluster, which: str) -> str:
    ctl = fh.fc.controllers
    return (fh.leader() or ctl[0]) if which == "leader" else ctl[0]


def _steer(fh: FaultCluster, controller: str, note: list[str]) -> Callable[[], None]:
    """A prepare step: every agent's session on `controller` first, so that a fault of the
    controller listed first hits the replica the agents use (after an earlier fault they
    may all sit on the other one)."""
    def prepare() -> None:
        done = fh.steer_sessions(controller)
        if done:
            note.append(done)
            fh.checker.wait_steady(time.monotonic(), 30)

    return prepare


def _kill(fh: FaultCluster, svc: str, hold: float, kind: str, steer: bool) -> Fault:
    note: list[str] = []
    return Fault(kind, svc, lambda: fh.c.kill(svc, signal.SIGKILL), lambda: fh.c.start(svc),
                 hold, _steer(fh, svc, note) if steer else lambda: None, note)


def _freeze(fh: FaultCluster, svc: str, hold: float, kind: str, steer: bool) -> Fault:
    note: list[str] = []
    return Fault(kind, svc, lambda: fh.c.freeze(svc), lambda: fh.c.thaw(svc), hold,
                 _steer(fh, svc, note) if steer else lambda: None, note)


def process(action: str, role: str) -> Maker:
    def make_it(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
        if role in ("leader", "first"):
            svc = _controller(fh, role)
        elif role == "agent":
            svc = rng.choice(list(fh.fc.node_services.values()))
        elif role == "etcd-first":
            svc = fh.fc.etcds[0]
        else:
            svc = rng.choice(fh.fc.etcds)
        kind = f"{action}-{'controller-' if role in ('leader', 'first') else ''}{role}"
        return (_kill if action == "kill" else _freeze)(fh, svc, hold, kind, role == "first")

    return make_it


# -- network faults --

def _blackhole(fh: FaultCluster, a: str | list[str], b: str | list[str], hold: float,
               kind: str) -> Fault:
    target = f"{a} <-> {','.join(b) if isinstance(b, list) else b}"
    return Fault(kind, target, lambda: fh.c.blackhole(a, b), lambda: fh.c.heal(a, b), hold)


def controller_etcd_blackhole(fh: FaultCluster, ctl: str, hold: float) -> Fault:
    """A controller that still talks to its agents but not to etcd: it must stop acking
    heartbeats it cannot back with a lease renewal. The agents' sessions are steered to it
    first, or the fault would hit a replica nobody uses."""
    fault = _blackhole(fh, ctl, list(fh.fc.etcds), hold, "blackhole-controller-etcd")
    fault.prepare = _steer(fh, ctl, fault.note)
    return fault


def blackhole_controller_etcd(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    return controller_etcd_blackhole(fh, _controller(fh, rng.choice(["leader", "first"])),
                                     hold)


def blackhole_agent_controller(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    node = rng.choice(fh.fc.nodes)
    ctl = fh.session_holder(node) or fh.fc.controllers[0]
    return _blackhole(fh, fh.fc.node_services[node], ctl, hold, "blackhole-agent-controller")


def blackhole_etcd_member(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    member = rng.choice(fh.fc.etcds)
    peers = [e for e in fh.fc.etcds if e != member]
    return _blackhole(fh, member, peers, hold, "blackhole-etcd-member")


def netem(loss: bool) -> Maker:
    def make_it(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
        svc = rng.choice(fh.c.selected)
        if loss:
            kw = {"loss_pct": round(rng.uniform(10, 40))}
        else:
            kw = {"delay_ms": round(rng.uniform(100, 400)), "jitter_ms": round(rng.uniform(0, 50))}
        label = ", ".join(f"{k} {v}" for k, v in kw.items())
        return Fault(f"netem-{'loss' if loss else 'delay'}", f"{svc} ({label})",
                     lambda: fh.c.netem(svc, **kw), lambda: fh.c.clear_netem(svc), hold)

    return make_it


def rolling_etcd_restart(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    def inject() -> None:
        for member in fh.fc.etcds:
            fh.c.stop(member, timeout=5)
            fh.c.start(member)  # waits until healthy (a quorum read answers)

    return Fault("etcd-rolling-restart", ",".join(fh.fc.etcds), inject, lambda: None, 0.0)


# -- interrupted requests --
