"""deploy/docker-compose.yml as deploy/netns_cluster.py reads it (no root needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))

from netns_cluster import ClusterError, load_compose, parse_duration  # noqa: E402

COMPOSE = REPO / "deploy" / "docker-compose.yml"


def test_compose_file_shape() -> None:
    services = load_compose(COMPOSE)
    assert [s for s in services if not services[s].profiles] == [
        "etcd-1", "etcd-2", "etcd-3", "controller-1", "controller-2",
        "node-1", "node-2", "node-3"]
    for name, svc in services.items():
        assert svc.restart in ("unless-stopped", "on-failure", "always") or svc.profiles, name
        if not svc.profiles:
            assert svc.healthcheck is not None, name
    for n in (1, 2, 3):
        etcd = services[f"etcd-{n}"]
        assert etcd.argv[:3] == ["etcd", "--name", f"etcd-{n}"]
        assert ("etcd-%d-data" % n, "/etcd-data") in etcd.volumes
        assert etcd.healthcheck is not None and etcd.healthcheck.argv[0] == "etcdctl"
        node = services[f"node-{n}"]
        # The entrypoint is the Dockerfile's (`viridian`), then the command.
        assert node.argv[:2] == ["viridian", "agent"]
        assert node.depends_on == {"controller-1": "service_healthy",
                                   "controller-2": "service_healthy"}
    for n in (1, 2):
        ctl = services[f"controller-{n}"]
        assert ctl.argv[:2] == ["viridian", "controller"]
        assert f"controller-{n}:50051" in ctl.argv
        assert set(ctl.depends_on) == {"etcd-1", "etcd-2", "etcd-3"}


def test_durations() -> None:
    assert parse_duration("1m30s", 0) == 90
    assert parse_duration("500ms", 0) == 0.5
    assert parse_duration(None, 7) == 7
    with pytest.raises(ClusterError):
        parse_duration("10 parsecs", 0)
