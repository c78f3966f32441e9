"""Fault injectors: every kind by name (KINDS; made in infra_faults.py and request_faults.py),
run_fault() that runs one with the checker watching and measures the recovery, and plan()
that draws a seeded random mix.

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

Recovery of a fault = from the moment its heal begins (a restart of a killed service is part
of it; for a request, from the user's next step: the start, the uncordon) to the end of the
first checker scan that sees the steady state: every node Ready, every HA partition Running
with its worker, no incident open. (f) counts from the same moment.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import infra_faults as infra
import request_faults as req
import rules
from etcd_view import Snapshot
from fault import Fault
from harness import FaultCluster

__all__ = ["FAMILIES", "KINDS", "Fault", "Outcome", "make", "plan", "run_fault"]

HOLD_S = (1.0, 8.0)  # a held fault lasts this long (uniform), unless told
HA_WITHIN_S = 10.0
RECOVER_S = 60.0


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


KINDS: dict[str, infra.Maker] = {
    "kill-controller-leader": infra.process("kill", "leader"),
    "kill-controller-first": infra.process("kill", "first"),
    "kill-agent": infra.process("kill", "agent"),
    "kill-etcd": infra.process("kill", "etcd"),
    "kill-etcd-first": infra.process("kill", "etcd-first"),
    "freeze-controller-leader": infra.process("freeze", "leader"),
    "freeze-controller-first": infra.process("freeze", "first"),
    "freeze-agent": infra.process("freeze", "agent"),
    "freeze-etcd": infra.process("freeze", "etcd"),
    "freeze-etcd-first": infra.process("freeze", "etcd-first"),
    "blackhole-controller-etcd": infra.blackhole_controller_etcd,
    "blackhole-agent-controller": infra.blackhole_agent_controller,
    "blackhole-etcd-member": infra.blackhole_etcd_member,
    "netem-delay": infra.netem(loss=False),
    "netem-loss": infra.netem(loss=True),
    "etcd-rolling-restart": infra.rolling_etcd_restart,
    "interrupted-delete": req.interrupted_delete,
    "interrupted-save": req.interrupted_save,
    "interrupted-move": req.interrupted_move,
    "interrupted-drain": lambda fh, rng, hold: req.drain(fh, rng, hold, cli=False),
    "drain-cli-killed": lambda fh, rng, hold: req.drain(fh, rng, hold, cli=True),
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
    healed = time.monotonic()  # the clock starts as the heal begins: restarts count
    try:
        fault.heal()
    except grpc.RpcError as err:
        fault.note.append(f"heal: {err.code().name if isinstance(err, grpc.Call) else err}")
    finally:
        fh.restore()
    if fault.timed_after_heal:
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
