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
        "certs", "etcd-1", "etcd-2", "etcd-3", "controller-1", "controller-2",
        "node-1", "node-2", "node-3"]
    # The one-shot that makes the cluster CA and certificates everything else mounts.
    certs = services["certs"]
    assert certs.argv[:2] == ["viridian", "certs"] and certs.restart == "no"
    assert ("pki", "/pki") in certs.volumes
    for name, svc in services.items():
        if name == "certs":
            continue
        assert svc.restart in ("unless-stopped", "on-failure", "always") or svc.profiles, name
        assert ("pki", "/pki") in svc.volumes, name
        if not svc.profiles:
            assert svc.healthcheck is not None, name
    for n in (1, 2, 3):
        etcd = services[f"etcd-{n}"]
        assert etcd.argv[:3] == ["etcd", "--name", f"etcd-{n}"]
        assert ("etcd-%d-data" % n, "/etcd-data") in etcd.volumes
        assert etcd.healthcheck is not None and etcd.healthcheck.argv[0] == "etcdctl"
        assert "--client-cert-auth" in etcd.argv and "--peer-client-cert-auth" in etcd.argv
        assert etcd.depends_on == {"certs": "service_completed_successfully"}
        node = services[f"node-{n}"]
        # The entrypoint is the Dockerfile's (`viridian`), then the command.
        assert node.argv[:2] == ["viridian", "agent"]
        assert node.depends_on == {"controller-1": "service_healthy",
                                   "controller-2": "service_healthy"}
        assert "--insecure" not in node.argv and f"/pki/node-node-{n}" in node.argv
    for n in (1, 2):
        ctl = services[f"controller-{n}"]
        assert ctl.argv[:2] == ["viridian", "controller"]
        assert f"controller-{n}:50051" in ctl.argv
        assert "--insecure" not in ctl.argv and f"/pki/controller-controller-{n}" in ctl.argv
        assert set(ctl.depends_on) == {"etcd-1", "etcd-2", "etcd-3"}


def test_durations() -> None:
    assert parse_duration("1m30s", 0) == 90
    assert parse_duration("500ms", 0) == 0.5
    assert parse_duration(None, 7) == 7
    with pytest.raises(ClusterError):
        parse_duration("10 parsecs", 0)
