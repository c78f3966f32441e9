"""`viridian up` gives every server it starts --metrics-listen on a free loopback port (the
same one again when it restarts a server) and its log flags, and lists the URLs."""

from __future__ import annotations

from pathlib import Path

from controller.embedded import Cluster


def test_servers_get_metrics_ports_and_log_flags(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2, "127.0.0.1:50051", insecure=True, metrics=True,
                      log_flags=("--log-format", "json", "--log-level", "DEBUG"))
    args = cluster.agent_args("node-1", 2, 1 << 30)
    assert args[args.index("--log-format") + 1] == "json"
    assert args[args.index("--log-level") + 1] == "DEBUG"
    listen = args[args.index("--metrics-listen") + 1]
    assert listen.startswith("127.0.0.1:")
    again = cluster.agent_args("node-1", 2, 1 << 30)
    assert again[again.index("--metrics-listen") + 1] == listen   # a restart: same port
    other = cluster.agent_args("node-2", 2, 1 << 30)
    assert other[other.index("--metrics-listen") + 1] != listen
    assert cluster.metrics_urls() == [
        ("node-1", f"http://{listen}/metrics"),
        ("node-2", f"http://{other[other.index('--metrics-listen') + 1]}/metrics")]


def test_no_metrics_no_flags(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 1, "127.0.0.1:50051", insecure=True)
    args = cluster.agent_args("node-1", 2, 1 << 30)
    assert "--metrics-listen" not in args and "--log-format" not in args
    assert cluster.metrics_urls() == []
