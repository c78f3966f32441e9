"""Fault injectors: each kind makes a Fault (prepare, inject, hold, heal), run_fault() runs one
with the checker watching and measures the recovery, plan() draws a seeded random mix.

Kinds, by family:

    kill        kill -9 of the leading controller, of controller-1 (the one every agent and
                client lists first), of an agent, of an etcd member, of etcd-1 (listed first)
    freeze      SIGSTOP ... SIGCONT of the same
    blackhole   a controller <-> every etcd member; an agent <-> the controller holding its
                session; one etcd member <-> the other members
    netem       delay (with jitter) or loss on a random service's egress
    rolling     a rolling restart of every etcd member (stop, start, healthy, next)
    request     delete --force, move, save or drain, each interrupted at a random moment:
                the gRPC call cancelled, or the CLI doing it killed with SIGKILL
    drain-cli   `viridian node drain` (the CLI, a child process) killed mid-way

Recovery of a fault = from its heal to the first checker scan that sees the steady state:
every node Ready, every HA partition Running with its worker, no incident open.
"""

from __future__ import annotations

import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import rules
from etcd_view import Snapshot, wait_readable
from failure_util import REPO
from harness import FaultCluster
from viridian.v1 import controller_pb2 as cpb

__all__ = ["FAMILIES", "KINDS", "Fault", "Outcome", "controller_etcd_blackhole", "make",
           "plan", "run_fault"]

HOLD_S = (1.0, 8.0)  # a held fault lasts this long (uniform), unless told
HA_WITHIN_S = 10.0
RECOVER_S = 60.0
REQUEST_SETTLE_S = 20.0


@dataclass
class Fault:
    kind: str
    target: str
    inject: Callable[[], None]
    heal: Callable[[], None]
    hold_s: float
    prepare: Callable[[], None] = lambda: None
    note: list[str] = field(default_factory=list)  # what happened, for the report
    victims: list[str] = field(default_factory=list)  # partitions it made: retired after


@dataclass
class Outcome:
    kind: str
    target: str
    hold_s: float
    injected_at: float
    healed_at: float
    recovery_s: float | None  # None: not steady within RECOVER_S
    ha_running: bool
    settled: bool
    violations: dict[str, int]
    note: str
    effects: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "hold_s": round(self.hold_s, 2),
                "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
                "ha_running_in_10s": self.ha_running, "settled": self.settled,
                "violations": {k: v for k, v in self.violations.items() if v},
                "note": self.note, "effects": self.effects}


# -- process faults --

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


def _process(action: str, role: str) -> Callable[[FaultCluster, random.Random, float], Fault]:
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


def _netem(loss: bool) -> Callable[[FaultCluster, random.Random, float], Fault]:
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

def _cli(fh: FaultCluster, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "--controller",
                             fh.fc.ctl, *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _interrupted(fh: FaultCluster, rng: random.Random, method: str, request: Any,
                 cli_args: list[str], note: list[str]) -> None:
    """Send the request and interrupt it at a random moment: either the gRPC call is
    cancelled after 0-12 ms (a delete or a save is answered in about that time here), or
    the CLI sending it is killed (SIGKILL, by its pid) after 0.3-1.2 s (its start-up takes
    most of that). Either way it may land before, during or after the server's work."""
    if rng.random() < 0.5:
        after = rng.uniform(0.0, 0.012)
        future = getattr(fh.api.stub(), method).future(request, timeout=10)
        time.sleep(after)
        cancelled = future.cancel()
        note.append(f"{method} cancelled after {after * 1000:.0f} ms"
                    f"{'' if cancelled else ' (it had completed)'}")
        return
    proc = _cli(fh, *cli_args)
    after = rng.uniform(0.3, 1.2)
    try:
        proc.wait(after)
        note.append(f"CLI {' '.join(cli_args[:2])} finished before its kill (exit "
                    f"{proc.returncode})")
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)  # our own child
        proc.wait(10)
        note.append(f"CLI {' '.join(cli_args[:2])} killed after {after:.2f}s")


def _interrupted_drain(fh: FaultCluster, rng: random.Random, node: str, cli: bool,
                       note: list[str]) -> None:
    """Start a drain and interrupt it mid-way: 0-0.5 s after its first progress message
    (the node is cordoned then and its partitions start to move), the stream is cancelled
    or the `viridian node drain` CLI printing it is killed with SIGKILL."""
    after = rng.uniform(0.0, 0.5)
    if not cli:
        call: Any = fh.api.stub().DrainNode(cpb.DrainNodeRequest(name=node), timeout=60)
        seen = 0
        try:
            for progress in call:
                seen += 1
                if seen == 1:
                    threading.Timer(after, call.cancel).start()
                if progress.done or progress.failed:
                    note.append(f"the drain ended before the cancel ({progress.message})")
                    return
        except grpc.RpcError as err:
            code = err.code().name if isinstance(err, grpc.Call) else "?"
            note.append(f"drain stream {code} {after:.2f}s after its first message")
        return
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "--controller",
                             fh.fc.ctl, "node", "drain", node], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15.0)  # its first progress line
    if ready:
        proc.stdout.readline()
        time.sleep(after)
    if proc.poll() is not None:
        note.append(f"the drain CLI ended by itself (exit {proc.returncode})")
    else:
        proc.send_signal(signal.SIGKILL)  # our own child, by its pid
        note.append(f"the drain CLI killed {after:.2f}s after its first line"
                    if ready else "the drain CLI killed, silent for 15 s")
    proc.wait(10)
    proc.stdout.close()


def _victim(fh: FaultCluster, kind: str) -> str:
    return fh.names(kind.removeprefix("interrupted-"), 1)[0]


def _wait_phase_not(fh: FaultCluster, name: str, phases: tuple[str, ...],
                    timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        snap = wait_readable(fh.view, 10)
        p = snap.partitions.get(name)
        ph = rules.phase(p) if p is not None else "absent"
        if ph not in phases or time.monotonic() > deadline:
            return ph
        time.sleep(0.1)


def interrupted_delete(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    name = _victim(fh, "interrupted-delete")
    note: list[str] = []

    def prepare() -> None:
        fh.create([name], ha=True)
        fh.wait_running([name])

    def inject() -> None:
        fh.checker.forget(name)  # from now on it may be gone
        _interrupted(fh, rng, "DeletePartition",
                     cpb.DeletePartitionRequest(name=name, force=True),
                     ["delete", name, "--force"], note)

    def heal() -> None:
        if name in wait_readable(fh.view, 10).partitions:
            note.append("the partition survived the interrupted delete")
            fh.checker.expect(name, ha=True)  # still there: acknowledged, as before
        else:
            note.append("the partition was deleted")

    return Fault("interrupted-delete", name, inject, heal, hold, prepare, note, [name])


def interrupted_save(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    name = _victim(fh, "interrupted-save")
    note: list[str] = []

    def prepare() -> None:
        fh.create([name], ha=True)
        fh.wait_running([name])

    def inject() -> None:
        _interrupted(fh, rng, "SavePartition", cpb.PartitionRef(name=name),
                     ["save", name], note)

    def heal() -> None:
        ph = _wait_phase_not(fh, name, ("SAVING",), REQUEST_SETTLE_S)
        note.append(f"after the save: {ph}")
        if ph == "SAVED":
            fh.api.call("StartPartition", cpb.StartPartitionRequest(name=name))

    return Fault("interrupted-save", name, inject, heal, hold, prepare, note, [name])


def interrupted_move(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    name = _victim(fh, "interrupted-move")
    note: list[str] = []
    where: list[str] = []

    def prepare() -> None:
        fh.create([name], ha=True)
        fh.wait_running([name])
        where.append(fh.bound_node(name))
        fh.api.call("SavePartition", cpb.PartitionRef(name=name))
        ph = _wait_phase_not(fh, name, ("RUNNING", "SAVING"), REQUEST_SETTLE_S)
        note.append(f"saved on {where[0]}: {ph}")

    def inject() -> None:
        to = rng.choice([n for n in fh.fc.nodes if n != where[0]])
        note.append(f"move to {to}")
        _interrupted(fh, rng, "MovePartition", cpb.MovePartitionRequest(name=name, to_node=to),
                     ["move", name, "--to", to], note)

    def heal() -> None:
        fh.api.call("StartPartition", cpb.StartPartitionRequest(name=name))

    return Fault("interrupted-move", name, inject, heal, hold, prepare, note, [name])


def _drain(fh: FaultCluster, rng: random.Random, hold: float, cli: bool) -> Fault:
    snap = wait_readable(fh.view, 10)
    load = {n: sum(b.node == n for b in snap.bindings.values()) for n in fh.fc.nodes}
    node = max(load, key=lambda n: load[n])
    note: list[str] = [f"{load[node]} partitions bound there"]

    def inject() -> None:
        _interrupted_drain(fh, rng, node, cli, note)
        deadline = time.monotonic() + REQUEST_SETTLE_S  # the drain goes on without a client
        while time.monotonic() < deadline:
            if not any(b.node == node for b in wait_readable(fh.view, 10).bindings.values()):
                note.append("the node emptied")
                return
            time.sleep(0.2)
        note.append(f"the node still had partitions bound {REQUEST_SETTLE_S:g}s later")

    def heal() -> None:
        fh.api.call("UncordonNode", cpb.CordonNodeRequest(name=node))

    kind = "drain-cli-killed" if cli else "interrupted-drain"
    return Fault(kind, node, inject, heal, hold, note=note)


KINDS: dict[str, Callable[[FaultCluster, random.Random, float], Fault]] = {
    "kill-controller-leader": _process("kill", "leader"),
    "kill-controller-first": _process("kill", "first"),
    "kill-agent": _process("kill", "agent"),
    "kill-etcd": _process("kill", "etcd"),
    "kill-etcd-first": _process("kill", "etcd-first"),
    "freeze-controller-leader": _process("freeze", "leader"),
    "freeze-controller-first": _process("freeze", "first"),
    "freeze-agent": _process("freeze", "agent"),
    "freeze-etcd": _process("freeze", "etcd"),
    "freeze-etcd-first": _process("freeze", "etcd-first"),
    "blackhole-controller-etcd": blackhole_controller_etcd,
    "blackhole-agent-controller": blackhole_agent_controller,
    "blackhole-etcd-member": blackhole_etcd_member,
    "netem-delay": _netem(loss=False),
    "netem-loss": _netem(loss=True),
    "etcd-rolling-restart": rolling_etcd_restart,
    "interrupted-delete": interrupted_delete,
    "interrupted-save": interrupted_save,
    "interrupted-move": interrupted_move,
    "interrupted-drain": lambda fh, rng, hold: _drain(fh, rng, hold, cli=False),
    "drain-cli-killed": lambda fh, rng, hold: _drain(fh, rng, hold, cli=True),
}
FAMILIES = {
    "kill": [k for k in KINDS if k.startswith("kill-")],
    "freeze": [k for k in KINDS if k.startswith("freeze-")],
    "blackhole": [k for k in KINDS if k.startswith("blackhole-")],
    "netem": ["netem-delay", "netem-loss"],
    "rolling": ["etcd-rolling-restart"],
    "request": [k for k in KINDS if k.startswith("interrupted-")],
    "drain-cli": ["drain-cli-killed"],
}


def make(kind: str, fh: FaultCluster, rng: random.Random, hold: float | None = None) -> Fault:
    return KINDS[kind](fh, rng, rng.uniform(*HOLD_S) if hold is None else hold)


def plan(rng: random.Random, count: int, kinds: list[str] | None = None) -> list[str]:
    """A seeded mix: every kind once (shuffled) while count allows, then random kinds."""
    pool = list(kinds or KINDS)
    first = rng.sample(pool, k=min(count, len(pool)))
    return first + [rng.choice(pool) for _ in range(count - len(first))]


def run_fault(fh: FaultCluster, fault: Fault, *, ha_within: float = HA_WITHIN_S,
              recover: float = RECOVER_S) -> Outcome:
    """Prepare, inject, hold, heal (and undo every fault: fh.restore()), then measure: HA
    partitions Running within ha_within (f), recovery to the steady state, nothing stuck
    after the settle period (g). Violations are those that began during this fault."""
    ck = fh.checker
    since = time.monotonic()
    ck.scenario = f"prepare {fault.kind}"
    fault.prepare()
    ck.scenario = f"{fault.kind} {fault.target}"
    before = ck.wait_scan(lambda sc: sc.snap is not None, time.monotonic(), 10)
    leader_before = fh.controller_of(before.snap.leader) if before and before.snap else ""
    failed_before = ck.scans_failed
    injected = time.monotonic()
    fault.inject()
    time.sleep(max(0.0, injected + fault.hold_s - time.monotonic()))  # the fault's hold
    ck.scenario = f"heal {fault.kind} {fault.target}"
    try:
        fault.heal()
    except grpc.RpcError as err:
        fault.note.append(f"heal: {err.code().name if isinstance(err, grpc.Call) else err}")
    finally:
        fh.restore()
    healed = time.monotonic()
    ck.scenario = f"after {fault.kind} {fault.target}"
    ha_ok = ck.check_ha_running(healed, ha_within)
    steady = ck.wait_scan(lambda sc: sc.steady, healed, recover)
    settled = ck.check_settled(healed)
    after = steady or ck.last
    seen = effects(fh, before.snap if before else None, after.snap if after else None,
                   leader_before)
    seen["etcd_unreadable_scans"] = ck.scans_failed - failed_before
    _write_off(fh, fault)
    out = Outcome(fault.kind, fault.target, fault.hold_s, injected, healed,
                  None if steady is None else steady.end - healed, ha_ok, settled,
                  ck.counts(since), "; ".join(fault.note), seen)
    if fault.victims:
        ck.scenario = f"clean-up after {fault.kind}"
        fh.retire(fault.victims)
    return out


def _write_off(fh: FaultCluster, fault: Fault) -> None:
    """An HA partition that this fault (or an earlier one) left not Running is counted once
    ((f) above); from then on it is expected as a plain partition (still never missing),
    so that it does not make every later fault look unrecovered."""
    ck = fh.checker
    last = ck.last
    if last is None or last.snap is None:
        return
    for name in ck.ha:
        p = last.snap.partitions.get(name)
        if p is not None and rules.phase(p) != "RUNNING":
            ck.expect(name, ha=False)
            fault.note.append(f"{name} written off ({rules.phase(p)}: {p.status.reason})")


def effects(fh: FaultCluster, before: Snapshot | None, after: Snapshot | None,
            leader_before: str) -> dict[str, Any]:
    """What the fault changed, from the snapshots before it and once steady again: the
    leader (resolved when each snapshot was read: a restarted controller has a new pid),
    which controller holds each node's session, and which partitions got a new binding
    (moved or restarted: a new epoch means a cold start of the guest)."""
    if before is None or after is None:
        return {}

    out: dict[str, Any] = {}
    lead = (leader_before, fh.controller_of(after.leader))
    out["leader"] = lead[0] if lead[0] == lead[1] else f"{lead[0]} -> {lead[1]}"
    out["sessions_moved"] = sorted(n for n, v in before.node_leases.items()
                                   if after.node_leases.get(n, v) != v)
    out["rebound"] = sorted(n for n in fh.checker.expected
                            if n in before.bindings and before.bindings[n] !=
                            after.bindings.get(n))
    return out
