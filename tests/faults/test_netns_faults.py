"""The netns runner's fault primitives on a three-service probe cluster (probe_net.py):
black holes drop silently both ways and only between the services named, netem delays and
drops, frozen services are thawed by close(), the CLI sees the runner's faults, and
nothing is left after close() or after a runner killed with SIGKILL (down())."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import NetnsCluster, down
from netns.cli import main as cli_main
from netns.leftovers import leftovers
from netns.network import forward_rules, namespaces
from netns.services import alive
from probe_net import CLOSED_PORT, reach, wait_listening, write_compose

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (`ip`) is not installed"),
    pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables is not installed"),
]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    out = tmp_path_factory.mktemp("probe")
    c = NetnsCluster(write_compose(out), out / "run", health_timeout=20)
    with c:
        wait_listening(c)
        yield c
    assert c.leftovers() == []


@pytest.fixture
def clean(probe: NetnsCluster) -> Iterator[NetnsCluster]:
    yield probe
    probe.heal_all()
    for svc in probe.selected:
        probe.clear_netem(svc)


def test_blackhole_drops_both_ways_without_rst(clean: NetnsCluster) -> None:
    c = clean
    assert reach(c, "a", "b").result == "ok"
    refused = reach(c, "a", "b", CLOSED_PORT)
    assert refused.result == "refused" and refused.after_s < 0.5  # the RST, at once

    c.blackhole("a", "b")
    assert c.blackholed("a") == ["b"] and c.blackholed("b") == ["a"]
    assert c.blackholed("c") == []
    # Dropped, not refused: even a closed port gives no RST now, and no ICMP either way.
    assert reach(c, "a", "b", CLOSED_PORT, timeout=1.0).result == "silent"
    assert reach(c, "a", "b", timeout=1.0).result == "silent"
    assert reach(c, "b", "a", timeout=1.0).result == "silent"
    # Only that pair: both still reach c, and the host reaches both.
    assert reach(c, "a", "c").result == "ok" and reach(c, "b", "c").result == "ok"
    assert reach(c, None, "a").result == "ok" and reach(c, None, "b").result == "ok"

    c.heal("b", "a")  # the same pair, named the other way round
    assert c.blackholed("a") == [] and c.blackholed("b") == []
    assert reach(c, "a", "b").result == "ok" and reach(c, "b", "a").result == "ok"
    assert reach(c, "a", "b", CLOSED_PORT).result == "refused"


def test_blackhole_between_a_service_and_a_group(clean: NetnsCluster) -> None:
    c = clean
    c.blackhole("a", ["b", "c"])
    c.blackhole("a", ["b", "c"])  # idempotent
    assert sorted(c.blackholed("a")) == ["b", "c"]
    assert reach(c, "a", "b", timeout=1.0).result == "silent"
    assert reach(c, "c", "a", timeout=1.0).result == "silent"
    assert reach(c, "b", "c").result == "ok"  # inside the group: untouched
    c.heal("a", "b")
    assert reach(c, "a", "b").result == "ok"
    assert reach(c, "a", "c", timeout=1.0).result == "silent"  # still cut
    c.heal_all()
    assert reach(c, "a", "c").result == "ok" and c.blackholed("c") == []


def test_netem_delay_jitter_and_loss(clean: NetnsCluster) -> None:
    c = clean
    base = reach(c, "a", "b", count=5)
    assert base.result == "ok" and max(base.rtt_ms) < 50

    how = c.netem("b", delay_ms=150)
    assert how in ("tc netem", "nfqueue")
    assert c.netem_state("b")
    slow = reach(c, "a", "b", count=5, timeout=3)
    assert slow.result == "ok", slow
    # b's replies wait 150 ms; requests from a do not (egress of b only).
    assert all(140 <= r < 400 for r in slow.rtt_ms), (how, slow.rtt_ms)
    assert max(reach(c, "a", "c", count=5).rtt_ms) < 50  # other services: untouched

    c.netem("b", delay_ms=100, jitter_ms=60)  # replaces the first
    jittery = reach(c, "a", "b", count=12, timeout=3).rtt_ms
    assert all(35 <= r < 400 for r in jittery) and max(jittery) - min(jittery) > 15, jittery

    c.netem("b", loss_pct=100)
    assert reach(c, "a", "b", timeout=1.0).result == "silent"

    c.clear_netem("b")
    assert c.netem_state("b") == ""
    back = reach(c, "a", "b", count=5)
    assert back.result == "ok" and max(back.rtt_ms) < 50, back


def test_cli_acts_on_the_runners_faults(clean: NetnsCluster,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    c = clean
    run_dir = str(c.run_dir)
    assert cli_main(["blackhole", "--run-dir", run_dir, "a", "b,c"]) == 0
    assert sorted(c.blackholed("a")) == ["b", "c"]
    assert cli_main(["netem", "--run-dir", run_dir, "c", "--delay-ms", "80"]) == 0
    assert "a " in capsys.readouterr().out
    assert min(reach(c, "b", "c", count=3, timeout=3).rtt_ms) >= 70
    assert cli_main(["heal", "--run-dir", run_dir, "--all"]) == 0
    assert cli_main(["clear-netem", "--run-dir", run_dir, "c"]) == 0
    assert c.blackholed("a") == [] and c.netem_state("c") == ""
    assert cli_main(["blackhole", "--run-dir", run_dir, "a", "nosuch"]) == 1


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _stopped(pid: int, timeout: float = 5.0) -> bool:
    """Whether the process is (or within `timeout` becomes) stopped: signals land async."""
    deadline = time.monotonic() + timeout
    while _state(pid) != "T":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_close_thaws_frozen_services_and_removes_faults(tmp_path: Path) -> None:
    c = NetnsCluster(write_compose(tmp_path), tmp_path / "run", health_timeout=20)
    with c:
        wait_listening(c)
        pid = c.pid("a")
        assert pid is not None
        c.freeze("a")
        assert c.frozen() == {"a"} and _stopped(pid)
        c.blackhole("b", "c")
        c.netem("b", delay_ms=50)
        delayers = c._faults.pids()  # the user-space delayer where tc netem is missing
    # A frozen process cannot act on SIGTERM: it was thawed, so its handler ran.
    assert (c.run_dir / "services" / "a" / "terminated").read_text() == "SIGTERM\n"
    assert c.frozen() == set()
    assert c.leftovers() == []
    assert delayers and not any(alive(p) for p in delayers)


CRASHER = '''
import sys, time
sys.path.insert(0, sys.argv[3])
from netns import NetnsCluster
c = NetnsCluster(sys.argv[1], sys.argv[2], health_timeout=20)
c.up()
c.freeze("a")
c.blackhole("a", ["b", "c"])
c.netem("c", delay_ms=30)
print(c.id, c.pid("a"), *c._faults.pids(), flush=True)
time.sleep(600)
'''


def test_down_after_a_killed_runner_leaves_nothing(tmp_path: Path) -> None:
    compose, run_dir = write_compose(tmp_path), tmp_path / "run"
    deploy = str(Path(__file__).resolve().parents[2] / "deploy")
    runner = subprocess.Popen([sys.executable, "-c", CRASHER, str(compose), str(run_dir),
                               deploy], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert runner.stdout is not None
        line = runner.stdout.readline().split()
        assert line, "the runner did not start its cluster"
        cid, frozen_pid, others = line[0], int(line[1]), [int(p) for p in line[2:]]
        assert _stopped(frozen_pid)
    finally:
        runner.kill()  # our own child, by its pid: the runner dies without cleaning up
        runner.wait(10)
    assert namespaces(cid), "the crashed runner should have left its namespaces"
    removed = down(run_dir)
    assert any(r.startswith("netns ") for r in removed)
    assert leftovers(cid, run_dir, []) == []
    assert forward_rules(cid) == []
    for pid in (frozen_pid, *others):
        assert not alive(pid), f"process {pid} survived down()"


OUTER = '''
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[3]); sys.path.insert(0, sys.argv[4])
from netns import NetnsCluster
from netns.network import forward_rules
from probe_net import reach, wait_listening
def as_dockerd_does():
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    open("/proc/sys/net/bridge/bridge-nf-call-iptables", "w").write("1\\n")
if sys.argv[5] == "before":
    as_dockerd_does()
c = NetnsCluster(sys.argv[1], sys.argv[2], health_timeout=20)
out = {}
with c:
    if sys.argv[5] == "after":  # a dockerd started while the cluster runs
        as_dockerd_does()
    wait_listening(c)
    out["rule"] = bool(forward_rules(c.id))
    out["with_rule"] = reach(c, "a", "b", timeout=1.0).result
    rule = ["-i", c.bridge, "-o", c.bridge, "-m", "comment", "--comment",
            "netns-cluster " + c.bridge, "-j", "ACCEPT"]
    if out["rule"]:
        subprocess.run(["iptables", "-D", "FORWARD", *rule], check=True)
        out["without_rule"] = reach(c, "a", "b", timeout=1.0).result
        subprocess.run(["iptables", "-I", "FORWARD", "1", *rule], check=True)
out["left"] = c.leftovers()
print(json.dumps(out))
'''


@pytest.mark.parametrize("when", ["before", "after"])
def test_bridged_traffic_flows_under_a_forward_drop_policy(tmp_path: Path, when: str) -> None:
    """dockerd's FORWARD policy DROP with bridge netfilter on, set before the cluster comes
    up or while it runs, in a namespace of our own (the host's rules stay as they are): the
    bridge's own ACCEPT rule keeps services talking, it matters (without it they cannot),
    and it goes with the cluster."""
    outer = f"vir-fwdtest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", outer], check=True)
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["ip", "netns", "exec", outer, sys.executable, "-c", OUTER,
             str(write_compose(tmp_path)), str(tmp_path / "run"), str(here.parents[1] / "deploy"),
             str(here), when], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.splitlines()[-1])
        assert out == {"rule": True, "with_rule": "ok", "without_rule": "silent", "left": []}
    finally:
        subprocess.run(["ip", "netns", "delete", outer], check=False)


def test_probe_cluster_left_nothing_frozen(probe: NetnsCluster) -> None:
    assert probe.frozen() == set()
    for svc in probe.selected:
        pid = probe.pid(svc)
        assert pid is not None and _state(pid) != "T"
