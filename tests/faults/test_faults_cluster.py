"""Viridian's promises under one fault of each family, on the compose cluster in network
namespaces (3 etcd members, 2 controllers, 3 agents, lease TTL 3 s), with real guests (half
of them HA) and the checker scanning throughout:

    a partition runs at most once, a node is never over-committed, no partition is lost

Each test makes its workload, runs one fault (injector.py), heals it, and asserts that the
cluster came back to its steady state and that the checker counted no violation of any kind
(checker.py: (a) to (g)). The full seeded mix of every fault kind is bench/faults.py.
These tests assert the promises as they stand: where the product breaks one, they fail.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from checker import LIMIT_S, Scan
from etcd_view import wait_readable
from harness import IMAGE, FaultCluster, fault_cluster, needs
from infra_faults import controller_etcd_blackhole
from injector import Fault, Outcome, make, run_fault
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb
from worker_view import starttime

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(needs() is not None, reason=str(needs())),
]

HOLD_S = 7.0  # longer than TTL + grace: what a fault breaks has time to show
SEED = 11


@pytest.fixture(scope="module")
def fh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with fault_cluster(Path(tmp_path_factory.mktemp("faults"))) as fh:
        yield fh
        print("\nchecker over the module: " + str(fh.checker.summary()))


def _run(fh: FaultCluster, fault: Fault | str, workload: tuple[int, int] = (2, 2)) -> None:
    """Baseline, workload, the fault, then the verdict: recovered, and no violation."""
    ck = fh.checker
    fh.restore()
    ck.scenario = "baseline"
    took = ck.wait_steady(time.monotonic(), 60)
    last = ck.last.not_steady if ck.last else ["no scan"]
    assert took is not None, f"no steady state to start from: {last}"
    since = time.monotonic()
    names = fh.workload("f", *workload)
    try:
        if isinstance(fault, str):
            fault = make(fault, fh, random.Random(SEED), HOLD_S)
        out: Outcome = run_fault(fh, fault)
        found = ck.violations(since)
        print(f"\n{out.kind} {out.target}: recovery "
              f"{'-' if out.recovery_s is None else f'{out.recovery_s:.2f}s'}; "
              f"scans ok {ck.scans_ok} failed {ck.scans_failed}; {out.effects}; "
              f"{out.note}\n" + ck.describe(found))
        assert found == [], "violations:\n" + ck.describe(found)
        assert out.recovery_s is not None, (
            f"not back to the steady state 60 s after the heal: "
            f"{ck.last.not_steady if ck.last else '-'}")
    finally:
        ck.scenario = "clean-up"
        fh.retire(names)


def _plant(where: Path, name: str, epoch: int, pid: int) -> None:
    """A worker directory as the agent writes it, for a process of ours."""
    where.mkdir(parents=True)
    (where / "meta.json").write_text(json.dumps({"name": name, "epoch": epoch}))
    (where / "pid").write_text(f"{pid} {starttime(pid)}\n")


def test_the_checker_sees_planted_violations(fh: FaultCluster) -> None:
    """A positive control on the real cluster, through the same scans. Planted in dot-named
    directories the agents never read, each behind a `sleep` of ours: a second live worker
    of a Running partition (a double, at once), and a worker of a partition etcd never had
    (unbound, after TTL + grace). And an acknowledged partition whose key is deleted behind
    the product's back (missing, at once)."""
    ck = fh.checker
    fh.restore()
    assert ck.wait_steady(time.monotonic(), 60) is not None
    ck.scenario = "positive control"
    since = time.monotonic()
    (name,) = fh.workload("pc", 1, 0)
    (off, ghost) = fh.names("pc-off", 1) + fh.names("pc-ghost", 1)
    spec = pb.PartitionSpec(image=IMAGE, args=["200"], vcpus=1, memory_bytes=16 << 20,
                            desired_state=pb.DESIRED_STATE_OFF)
    fh.api.call("CreatePartition", cpb.CreatePartitionRequest(name=off, spec=spec))
    ck.expect(off, ha=False)
    (real,) = [w for w in fh.workers() if w.name == name]
    elsewhere = next(n for n in fh.fc.nodes if n != real.node)
    parts = fh.run_dirs[elsewhere] / "workers" / "partitions"
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        _plant(parts / f".planted-{name}", name, real.epoch or 0, sleepers[0].pid)
        revision = wait_readable(fh.view, 10).revision
        _plant(parts / f".planted-{ghost}", ghost, revision, sleepers[1].pid)
        assert fh.fc.etcdctl("del", f"/viridian/partitions/{off}").returncode == 0

        def caught(*kinds: str) -> Callable[[Scan], bool]:
            return lambda _scan: set(kinds) <= {i.kind for i in ck.violations(since)}

        assert ck.wait_scan(caught("double", "missing"), since, 5.0) is not None, \
            ck.describe(ck.violations(since))
        shutil.rmtree(parts / f".planted-{name}")  # before it is an unbound worker too
        assert ck.wait_scan(caught("unbound_worker"), since, LIMIT_S + 3) is not None, \
            ck.describe(ck.violations(since))
    finally:
        for sleeper in sleepers:
            sleeper.kill()  # our own children
            sleeper.wait(5)
        for planted in parts.glob(".planted-*"):
            shutil.rmtree(planted, ignore_errors=True)
        ck.forget(off)
        ck.scenario = "clean-up"
        fh.retire([name])
    found = {(i.kind, i.subject) for i in ck.violations(since)}
    assert found == {("double", name), ("missing", off), ("unbound_worker", ghost)}, \
        ck.describe(ck.violations(since))


def test_kill_the_leading_controller(fh: FaultCluster) -> None:
    _run(fh, "kill-controller-leader")


def test_freeze_the_controller_listed_first(fh: FaultCluster) -> None:
    _run(fh, "freeze-controller-first")


def test_blackhole_between_the_agents_controller_and_etcd(fh: FaultCluster) -> None:
    _run(fh, controller_etcd_blackhole(fh, fh.fc.controllers[0], HOLD_S))


def test_netem_delay_and_loss_on_the_leader(fh: FaultCluster) -> None:
    leader = fh.leader() or fh.fc.controllers[0]
    _run(fh, Fault("netem-delay+loss", f"{leader} (250±50 ms, 10%)",
                   lambda: fh.c.netem(leader, delay_ms=250, jitter_ms=50, loss_pct=10),
                   lambda: fh.c.clear_netem(leader), HOLD_S))


def test_rolling_restart_of_etcd(fh: FaultCluster) -> None:
    _run(fh, "etcd-rolling-restart")


@pytest.mark.parametrize("kind", ["interrupted-delete", "interrupted-save"])
def test_interrupted_request(fh: FaultCluster, kind: str) -> None:
    _run(fh, kind)


def test_drain_client_killed(fh: FaultCluster) -> None:
    _run(fh, "drain-cli-killed", workload=(3, 3))
