"""Node failures on the compose cluster in network namespaces (deploy/docker-compose.yml:
3 etcd, 2 controllers, 3 agents, lease TTL 3 s): a node cut off, an agent frozen, two of
three nodes cut at once. One cluster for the module; each test leaves it with 3 Ready nodes.

The heartbeat guest (tests/guests/hb_beat.c) prints `beat <host realtime ns>` every 50 ms,
so the old copy's console ring (read from the node's run dir on the host) and the new copy's
`viridian logs` can be laid on one time line: the old copy's last beat must come before the
new copy's first.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator

import pytest
from failure_util import (
    GUESTS,
    NODES,
    TTL_S,
    FailCluster,
    beats,
    cluster_up,
    compile_guest,
    phase,
    wait_until,
)
from itutil import run_cli

from controller.partitions.eviction import RETURNS_SETTLE_S

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (`ip`) is not installed"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed"),
]

# The goal: HA partitions Running elsewhere <= 5 s after the cut. The assertion
# leaves room for a loaded 2-core machine; the measured figure is printed.
HA_GOAL_S = 5.0
HA_LIMIT_S = 9.0


@pytest.fixture(scope="module")
def fc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailCluster]:
    out = tmp_path_factory.mktemp("fnodes")
    hb = compile_guest(GUESTS / "hb_beat.c", out / "hb")
    yield from cluster_up(out / "cluster", images={"hb": hb})


@pytest.fixture
def healthy(fc: FailCluster) -> Iterator[FailCluster]:
    fc.ensure_ready()
    yield fc
    fc.ensure_ready()


def _no_two_copies(fc: FailCluster, names: list[str], seconds: float) -> None:
    """For `seconds`, never more than one live worker per partition name on all nodes."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        live = fc.live_workers()
        for name in names:
            assert len(live.get(name, [])) <= 1, f"two live copies of {name}: {live[name]}"
        time.sleep(0.05)


def _failover_with_beats(fc: FailCluster, name: str, node: str, freeze: bool) -> None:
    """Break `node` (cut its link, or SIGSTOP its agent), follow `name` to its new node,
    and check from both sides that the two copies never ran at the same instant."""
    api = fc.api
    api.create_on(node, [(name, "hb", ["50"], True)])
    old = api.get(name)
    wait_until(lambda: len(beats(fc.console(node, name))) >= 5, "old copy beating", 10)

    t0 = time.monotonic()
    if freeze:
        fc.c.send_signal(node, signal.SIGSTOP)
    else:
        fc.c.cut(node)
    try:
        new = fc.wait_phase(name, "RUNNING", 20, lambda p: p.status.node != node)
        took = time.monotonic() - t0
        assert new.status.epoch > old.status.epoch
        # The old copy stopped by itself (agent fence or the worker's watchdog): its worker
        # is gone while the node is still cut off / frozen.
        wait_until(lambda: not any(w.name == name for w in fc.workers(node)),
                   "old worker gone", 5)
        old_beats = beats(fc.console(node, name))
        wait_until(lambda: len(beats(fc.logs(name))) >= 3, "new copy beating", 10)
        new_beats = beats(run_cli(fc.ctl, *fc.cli_flags(), "logs", name, timeout=20).out)
        assert old_beats and new_beats
        gap_ms = (new_beats[0] - old_beats[-1]) / 1e6
        print(f"\n{'freeze' if freeze else 'cut'} {node}: Running on {new.status.node} "
              f"after {took:.2f}s; old copy's last beat -> new copy's first: {gap_ms:.0f} ms")
        assert old_beats[-1] < new_beats[0], f"the two copies overlapped by {-gap_ms:.0f} ms"
        live = fc.live_workers()[name]
        assert [(w.node, w.epoch) for w in live] == [(new.status.node, new.status.epoch)]
    finally:
        if freeze:
            fc.c.send_signal(node, signal.SIGCONT)
        else:
            fc.c.restore(node)

    # Back in contact: the old node must not revive its copy (its epoch is stale).
    fc.wait_nodes({node: "READY"}, 20)
    _no_two_copies(fc, [name], 3.0)
    live = fc.live_workers()[name]
    assert [(w.node, w.epoch) for w in live] == [(new.status.node, new.status.epoch)]
    after = api.get(name)
    assert phase(after) == "RUNNING" and after.status.node == new.status.node
    assert after.status.epoch == new.status.epoch
    # The new copy kept beating through the old node's return.
    assert max(beats(fc.logs(name))) > new_beats[-1]
    api.delete(name)


@pytest.mark.timeout(120)
def test_node_cut_not_ready_lost_and_ha_elsewhere(healthy: FailCluster) -> None:
    fc, api = healthy, healthy.api
    node = "node-1"
    api.create_on(node, [("nl-ha", "hb", ["200"], True), ("nl-plain", "hb", ["200"], False)])
    t0 = time.monotonic()
    fc.c.cut(node)
    try:
        moved = fc.wait_phase("nl-ha", "RUNNING", HA_LIMIT_S + 5,
                              lambda p: p.status.node != node)
        took = time.monotonic() - t0
        fc.wait_nodes({node: "NOT_READY"}, 5)
        lost = fc.wait_phase("nl-plain", "LOST", 5)
        assert lost.status.node in ("", node) and node in lost.status.reason
        assert moved.status.node in NODES and moved.status.restarts == 1
        assert "HARestart" in api.event_reasons("nl-ha")
        assert "NodeNotReady" in api.event_reasons(node)
        print(f"\ncut {node} -> nl-ha Running on {moved.status.node}: {took:.2f}s "
              f"(goal {HA_GOAL_S:.0f}s)")
        assert took <= HA_LIMIT_S
    finally:
        fc.c.restore(node)
    fc.wait_nodes({node: "READY"}, 20)
    # The plain partition stays Lost until started by hand, and nothing runs twice.
    time.sleep(1.0)
    assert phase(api.get("nl-plain")) == "LOST"
    live = fc.live_workers()
    assert "nl-plain" not in live
    assert [w.node for w in live["nl-ha"]] == [moved.status.node]
    api.delete("nl-ha")
    api.delete("nl-plain")


@pytest.mark.timeout(120)
def test_cut_node_fences_before_ha_restart(healthy: FailCluster) -> None:
    _failover_with_beats(healthy, "fence-cut", "node-2", freeze=False)


@pytest.mark.timeout(120)
def test_frozen_agent_watchdog_fences_before_ha_restart(healthy: FailCluster) -> None:
    _failover_with_beats(healthy, "fence-stop", "node-3", freeze=True)


@pytest.mark.timeout(120)
def test_two_of_three_cut_holds_evictions(healthy: FailCluster) -> None:
    """Two of three nodes silent at once: the leader suspects the control plane and evicts
    nothing (event EvictionsHeld). The cut agents still fence themselves after the TTL
    (their workers stop: nothing may run where the controller cannot see it), so when the
    links come back they report their partitions fenced: the HA ones are placed again
    (restarts + 1, event Fenced), the others become Lost."""
    fc, api = healthy, healthy.api
    cut = ["node-1", "node-2"]
    names: dict[str, tuple[str, bool]] = {}
    for node in cut:
        specs = [(f"mass-ha-{node}", "hb", ["200"], True),
                 (f"mass-plain-{node}", "hb", ["200"], False)]
        api.create_on(node, specs)
        names.update({s[0]: (node, s[3]) for s in specs})
    before = {e.id for e in api.events()}
    for node in cut:
        fc.c.cut(node)
    try:
        def held() -> bool:
            return any(e.reason == "EvictionsHeld" and e.id not in before
                       for e in api.events())

        wait_until(held, "EvictionsHeld", TTL_S + 6, 0.2, fc.tails)
        fc.wait_nodes(dict.fromkeys(cut, "NOT_READY"), 5)
        # Well past TTL + grace: still bound where they were, not restarted, not Lost.
        time.sleep(2.5)
        parts = api.partitions()
        for name, (node, _) in names.items():
            p = parts[name]
            assert p.status.node == node and phase(p) == "RUNNING", (name, p.status)
            assert p.status.restarts == 0
        new_reasons = {e.reason for e in api.events() if e.id not in before
                       and e.object in names}
        assert not new_reasons & {"HARestart", "NodeLost", "Scheduled"}, new_reasons
        # Meanwhile the cut nodes fenced themselves: no live worker anywhere.
        live = fc.live_workers()
        assert not set(live) & set(names), live
    finally:
        for node in cut:
            fc.c.restore(node)
    fc.wait_nodes(dict.fromkeys(NODES, "READY"), 20)
    # The hold lasts until no node has come back for RETURNS_SETTLE_S (5 s), so the second
    # node back normally finds it still in force; on a slow machine it may come back later,
    # after its grace, and have its partitions evicted (HARestart / NodeLost) before it
    # reports them fenced (Fenced). Both are safe: they were stopped.
    story: list[str] = []
    for name, (_, ha) in names.items():
        p = fc.wait_phase(name, "RUNNING" if ha else "LOST", 15)
        reasons = api.event_reasons(name)
        story.append(f"{name}: {phase(p)} on {p.status.node or '-'} restarts "
                     f"{p.status.restarts}; {reasons[3:]}")
        assert p.status.restarts == (1 if ha else 0)
        assert {"Fenced", "HARestart" if ha else "NodeLost"} & set(reasons), reasons
    print("\n" + "\n".join(story))
    # The hold ends RETURNS_SETTLE_S after the last node came back, at the leader's next
    # lifecycle pass: after the nodes back have reported their partitions fenced and the HA
    # ones started again (asserting at once failed one CI run: the pass came 66 ms late).
    wait_until(lambda: "EvictionsResumed" in api.event_reasons(), "EvictionsResumed",
               RETURNS_SETTLE_S + 10, 0.2, fc.tails)
    _no_two_copies(fc, list(names), 1.0)
    for name in names:
        api.delete(name)
