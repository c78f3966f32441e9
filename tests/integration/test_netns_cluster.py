"""deploy/docker-compose.yml, run as processes in network namespaces (deploy/netns_cluster.py).

One test walks the whole cluster: 3 etcd members, 2 controllers and 3 agents, each on its own
address behind a bridge; the CLI talks to it from the host as a user would. It needs root and
iproute2, and skips without them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from itutil import GUESTS, CliResult, compile_guest, run_cli, wait_for

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
sys.path.insert(0, str(REPO / "deploy"))

from netns_cluster import NetnsCluster  # noqa: E402

NODES = ("node-1", "node-2", "node-3")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (`ip`) is not installed"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed"),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NetnsCluster]:
    c = NetnsCluster(COMPOSE, tmp_path / "cluster", health_timeout=60)
    try:
        with c:
            yield c
    finally:
        # Whatever happened above: nothing of the cluster may be left on the host.
        assert c.leftovers() == []


def flags(c: NetnsCluster) -> list[str]:
    """The CLI's credentials for the cluster (written by the compose file's certs service)."""
    admin = c.run_dir / "volumes" / "pki" / "admin"
    return ["--ca", str(admin / "ca.pem"), "--token-file", str(admin / "token")]


def node_states(c: NetnsCluster, address: str) -> dict[str, str]:
    res = run_cli(address, *flags(c), "nodes", "-o", "json", timeout=20)
    if res.code != 0:
        return {}
    return {n["name"]: n["status"]["state"].removeprefix("NODE_STATE_")
            for n in json.loads(res.out)}


def wait_states(c: NetnsCluster, address: str, want: dict[str, str], timeout: float) -> float:
    """Seconds until every node in want is in its state; the failure names the logs."""
    start = time.monotonic()
    last: dict[str, str] = {}

    def probe() -> bool:
        last.update(node_states(c, address))
        return all(last.get(n) == s for n, s in want.items())

    try:
        wait_for(probe, f"nodes {want}", timeout, interval=0.2)
    except AssertionError as err:
        logs = "\n".join(f"--- {s}\n{c.logs(s, 15)}" for s in c.selected)
        raise AssertionError(f"{err}; states {last}\n{logs}") from None
    return time.monotonic() - start


def ok(res: CliResult) -> CliResult:
    assert res.code == 0, str(res)
    return res


@pytest.mark.timeout(240)
def test_compose_cluster_in_namespaces(cluster: NetnsCluster, tmp_path: Path) -> None:
    c = cluster
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    ctl = ",".join(f"{c.address(s)}:50051" for s in ("controller-1", "controller-2"))

    # Every service has its own address, and names resolve inside the namespaces.
    assert len({c.address(s) for s in c.selected}) == len(c.selected) == 9  # certs too
    hosts = c.exec("node-1", ["python", "-c",
                              "import socket; print(socket.gethostbyname('controller-2'))"])
    assert hosts.stdout.strip() == c.address("controller-2"), hosts

    timings["3 nodes Ready"] = wait_states(c, ctl, dict.fromkeys(NODES, "READY"), 30)

    # A real guest, pushed and run through the cluster from the host.
    hello = compile_guest(GUESTS / "hello.c", tmp_path / "hello")
    ok(run_cli(ctl, *flags(c), "image", "push", "hello", str(hello)))
    res = run_cli(ctl, *flags(c), "run", "--image", "hello", "--env", "GREETING=hi", "--",
                  "7", "a", "b")
    assert res.code == 7, str(res)
    assert "arg1=7" in res.out and "arg3=b" in res.out and "GREETING=hi" in res.out, str(res)

    # Controller-1 dies: the CLI fails over to controller-2, which serves the same cluster.
    c.kill("controller-1")
    assert c.pid("controller-1") is None
    t = time.monotonic()
    nodes = json.loads(ok(run_cli(ctl, *flags(c), "nodes", "-o", "json", timeout=20)).out)
    timings["CLI failover"] = time.monotonic() - t
    assert sorted(n["name"] for n in nodes) == list(NODES)
    # The agents that were on controller-1 reconnect to controller-2: all Ready again.
    timings["Ready via controller-2"] = wait_states(c, ctl, dict.fromkeys(NODES, "READY"), 30)
    res = run_cli(ctl, *flags(c), "run", "--image", "hello", "--", "3")
    assert res.code == 3 and "arg1=3" in res.out, str(res)

    # A network cut: node-3's link goes down; its lease lapses and it becomes NotReady.
    c.cut("node-3")
    timings["cut -> NotReady"] = wait_states(c, ctl, {"node-3": "NOT_READY"}, 10)
    assert node_states(c, ctl)["node-1"] == "READY"
    c.restore("node-3")
    timings["restore -> Ready"] = wait_states(c, ctl, {"node-3": "READY"}, 30)

    # The restart policy: an agent killed behind the runner's back is started again
    # (unless-stopped), and its node comes back Ready; its volume holds its run dir.
    old_pid = c.pid("node-2")
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    t = time.monotonic()
    wait_for(lambda: c.pid("node-2") not in (None, old_pid), "node-2 restarted", 15)
    timings["kill -9 agent -> restarted"] = time.monotonic() - t
    wait_states(c, ctl, dict.fromkeys(NODES, "READY"), 30)
    assert (c.run_dir / "volumes" / "node-2-run" / "run").is_dir()

    timings["total (after up)"] = time.monotonic() - t0
    print("\n" + "\n".join(f"{k:>24}: {v:5.1f}s" for k, v in timings.items()))
