"""Viridian under faults: the full seeded run of tests/faults/ on the compose cluster in
network namespaces (3 etcd, 2 controllers, 3 agents, lease TTL 3 s; root).

    sudo .venv/bin/python bench/faults.py [--seeds 3] [--duration 300] [--kinds a,b,...]
                                          [--headline-trials 3] [--json PATH]

For each seed: a fresh workload of real guests (3 HA, 3 not), then a seeded random sequence
of faults of every kind (tests/faults/injector.py: kill -9 and SIGSTOP of controllers,
agents and etcd members, black holes, netem delay and loss, a rolling etcd restart,
interrupted delete --force / move / save / drain, a killed drain client), each held 1-8 s
and healed, until --duration seconds have gone by. The checker (tests/faults/checker.py)
scans etcd and the nodes' workers every ~150 ms throughout and counts violations.

Then the two headline figures, each with --headline-trials trials: HA failover time (a
node's link cut -> its HA partition Running on another node) while controller-1, the one
every agent and client lists first, is frozen (SIGSTOP) / black-holed from every other
service at the same instant, next to the same cut with every controller healthy.

Prints a table and writes JSON under bench/results/ (or --json).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "tests" / "faults", REPO / "tests" / "integration", REPO / "deploy", REPO):
    sys.path.insert(0, str(_p))

from checker import KINDS as VIOLATION_KINDS  # noqa: E402
from checker import Scan  # noqa: E402
from harness import FaultCluster, fault_cluster, needs  # noqa: E402
from injector import KINDS, Outcome, make, plan, run_fault  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

RUNNING = pb.PARTITION_PHASE_RUNNING

FAILOVER_DEADLINE_S = 30.0


def _stats(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2)}


def run_seed(fh: FaultCluster, seed: int, duration: float, kinds: list[str]) -> list[Outcome]:
    rng = random.Random(seed)
    ck = fh.checker
    fh.restore()
    ck.scenario = f"seed {seed} workload"
    if ck.wait_steady(time.monotonic(), 60) is None:
        print(f"  seed {seed}: no steady state to start from: "
              f"{ck.last.not_steady if ck.last else '-'}", flush=True)
    names = fh.workload(f"s{seed}", ha=3, plain=3)
    outcomes: list[Outcome] = []
    order = plan(rng, 10_000, kinds)
    end = time.monotonic() + duration
    try:
        for kind in order:
            if time.monotonic() >= end:
                break
            fault = make(kind, fh, rng)
            try:
                out = run_fault(fh, fault)
            except Exception as err:  # noqa: BLE001 - a harness step failed: say so, go on
                print(f"  seed {seed} {kind}: the run failed: {err!r}", flush=True)
                fh.restore()
                continue
            outcomes.append(out)
            bad = {k: v for k, v in out.violations.items() if v}
            rec = "-" if out.recovery_s is None else f"{out.recovery_s:.2f}s"
            eff = out.effects
            moved = (f"leader {eff.get('leader', '?')}, sessions moved "
                     f"{len(eff.get('sessions_moved', []))}, rebound "
                     f"{len(eff.get('rebound', []))}, etcd unreadable scans "
                     f"{eff.get('etcd_unreadable_scans', 0)}")
            print(f"  seed {seed} {out.kind:<27} {out.target:<36} hold {out.hold_s:4.1f}s "
                  f"recovery {rec:>7}  {bad or ''} [{moved}] {out.note}", flush=True)
    finally:
        ck.scenario = f"seed {seed} clean-up"
        fh.retire(names)
    return outcomes


def failover_trial(fh: FaultCluster, label: str, fault: Callable[[], None],
                   i: int) -> float | None:
    """Cut the node of a fresh HA partition at the same instant as `fault`; seconds until
    a scan shows it Running, with its worker, on another node (None: not within 30 s)."""
    ck = fh.checker
    fh.restore()
    ck.scenario = f"failover {label}: prepare"
    fh.steer_sessions(fh.fc.controllers[0])  # the agents on the controller listed first
    ck.wait_steady(time.monotonic(), 60)
    (name,) = fh.create(fh.names(f"fo{i}", 1), ha=True)
    fh.wait_running([name])
    node = fh.bound_node(name)
    leader = fh.leader()
    ck.scenario = f"failover {label}: cut {node}"
    t0 = time.monotonic()
    fault()
    fh.c.cut(fh.fc.node_services[node])

    def moved(scan: Scan) -> bool:
        snap = scan.snap
        if snap is None or name not in snap.bindings:
            return False
        b = snap.bindings[name]
        return (b.node != node and snap.partitions[name].status.phase == RUNNING
                and any(w.name == name and w.node == b.node and w.epoch == b.revision
                        for w in scan.workers))

    scan = ck.wait_scan(moved, t0, FAILOVER_DEADLINE_S)
    took = None if scan is None else scan.end - t0
    ck.scenario = f"failover {label}: restore"
    fh.restore()
    fh.retire([name])
    print(f"  failover {label:<24} trial {i + 1}: {node} cut, leader was {leader}: "
          f"{'not within 30 s' if took is None else f'{took:.2f}s'}", flush=True)
    return took


def headline(fh: FaultCluster, trials: int) -> dict[str, Any]:
    first = fh.fc.controllers[0]
    others = [s for s in fh.c.selected if s != first]
    cases: dict[str, Callable[[], None]] = {
        "controllers healthy": lambda: None,
        f"{first} frozen": lambda: fh.c.freeze(first),
        f"{first} black-holed": lambda: fh.c.blackhole(first, others),
    }
    out: dict[str, Any] = {}
    for label, fault in cases.items():
        times = [failover_trial(fh, label, fault, i) for i in range(trials)]
        ok = [t for t in times if t is not None]
        out[label] = {**_stats(ok), "failed": len(times) - len(ok),
                      "trials_s": [None if t is None else round(t, 2) for t in times]}
    return out


def report(outcomes: list[Outcome], fh: FaultCluster, head: dict[str, Any]) -> dict[str, Any]:
    ck = fh.checker
    by_kind: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        by_kind[o.kind].append(o)
    print(f"\n{'fault kind':<27} {'n':>3} {'viol':>5} {'rec. median':>11} {'rec. max':>9} "
          f"{'not recov.':>10} {'HA>10s':>6} {'stuck':>5}")
    rows: dict[str, Any] = {}
    for kind in sorted(by_kind):
        outs = by_kind[kind]
        rec = [o.recovery_s for o in outs if o.recovery_s is not None]
        viol = sum(sum(o.violations.values()) for o in outs)
        row = {"injected": len(outs), "violations": viol, "recovery_s": _stats(rec),
               "not_recovered": len(outs) - len(rec),
               "ha_not_running_10s": sum(not o.ha_running for o in outs),
               "not_settled": sum(not o.settled for o in outs)}
        rows[kind] = row
        s = row["recovery_s"]
        print(f"{kind:<27} {len(outs):>3} {viol:>5} {s.get('median', '-'):>11} "
              f"{s.get('max', '-'):>9} {row['not_recovered']:>10} "
              f"{row['ha_not_running_10s']:>6} {row['not_settled']:>5}")
    counts = ck.counts()
    print(f"\nchecker: {ck.scans_ok} scans, {ck.scans_failed} with etcd unreadable")
    print("violations by kind: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for inc in ck.violations():
        print(f"  {inc.kind:<23} {inc.subject:<16} lasted {inc.last_seen - inc.first_seen:5.1f}s"
              f"  during [{inc.scenario}]  {inc.detail}")
    print("\nHA failover (node cut -> HA partition Running elsewhere):")
    for label, s in head.items():
        print(f"  {label:<26} median {s.get('median', '-')}s max {s.get('max', '-')}s "
              f"(n {s['n']}, failed {s['failed']}) trials {s['trials_s']}")
    return {"by_kind": rows, "scans_ok": ck.scans_ok, "scans_failed": ck.scans_failed,
            "violations": counts, "violation_kinds": VIOLATION_KINDS,
            "incidents": [i.as_dict(ck.t0) for i in ck.violations()],
            "failover": head, "faults": [o.as_dict() for o in outcomes]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeded runs (seeds 1..N)")
    ap.add_argument("--duration", type=float, default=300.0,
                    help="seconds of faults per seed")
    ap.add_argument("--kinds", default="", help="comma list of fault kinds (default: all)")
    ap.add_argument("--headline-trials", type=int, default=3)
    ap.add_argument("--json", type=Path, help="where to write the results")
    args = ap.parse_args()
    why = needs()
    if why:
        print(f"faults bench: {why}", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k] or list(KINDS)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        print(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    outcomes: list[Outcome] = []
    with fault_cluster(Path(tempfile.mkdtemp(prefix="vbfaults-", dir="/tmp"))) as fh:
        print(f"cluster up ({fh.fc.ctl}); {args.seeds} seed(s), {args.duration:g}s of faults "
              f"each, kinds: {len(kinds)}", flush=True)
        for seed in range(1, args.seeds + 1):
            outcomes += run_seed(fh, seed, args.duration, kinds)
        head = headline(fh, args.headline_trials) if args.headline_trials else {}
        result = report(outcomes, fh, head)
    result.update({
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "args": {"seeds": args.seeds, "duration_s": args.duration, "kinds": kinds,
                 "headline_trials": args.headline_trials},
        "lease_ttl_s": 3, "elapsed_s": round(time.monotonic() - started, 1)})
    out = args.json or (REPO / "bench" / "results" /
                        f"faults-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out} ({result['elapsed_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
