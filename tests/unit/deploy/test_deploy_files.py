"""The deploy files as written: systemd units (parsed with configparser), the compose file's
Docker-facing settings, and how deploy/docker_images.py finds the apt mirror."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
sys.path.insert(0, str(DEPLOY))

from docker_images import DEFAULT_MIRROR, apt_mirror, context_files  # noqa: E402


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


@pytest.mark.parametrize(("name", "role"), [("viridian-controller.service", "controller"),
                                            ("viridian-agent.service", "agent")])
def test_units_run_viridian_with_their_environment_file(name: str, role: str) -> None:
    u = unit(name)
    assert set(u.sections()) == {"Unit", "Service", "Install"}
    svc = u["Service"]
    env_file = svc["EnvironmentFile"]
    assert env_file == f"/etc/viridian/{role}.env"
    var = f"VIRIDIAN_{role.upper()}_ARGS"
    # $VAR unbraced: systemd splits it into separate arguments.
    assert shlex.split(svc["ExecStart"]) == ["/opt/viridian/bin/viridian", role, f"${var}"]
    assert svc["Restart"] == "on-failure"
    assert svc["User"] == "viridian"
    assert u["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in u["Unit"]["After"]
    # The example environment file sets exactly that variable.
    example = (DEPLOY / "systemd" / f"{role}.env.example").read_text()
    assert any(line.startswith(f"{var}=") for line in example.splitlines())


def test_agent_restart_leaves_workers_running() -> None:
    assert unit("viridian-agent.service")["Service"]["KillMode"] == "process"
    assert unit("viridian-controller.service")["Service"]["KillMode"] != "process"


def compose() -> dict[str, object]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_is_v1_and_v2_syntax() -> None:
    """No top-level name and no healthcheck start_interval (docker-compose 1.29 refuses both)."""
    data = compose()
    assert "name" not in data and "version" not in data
    services = data["services"]
    assert isinstance(services, dict)
    for svc in services.values():
        assert "start_interval" not in (svc.get("healthcheck") or {})


def test_compose_publishes_on_loopback_only_and_builds_nothing_from_a_registry() -> None:
    data = compose()
    services = data["services"]
    assert isinstance(services, dict)
    published = 0
    for name, svc in services.items():
        assert str(svc["image"]) == "${VIRIDIAN_IMAGE:-viridian:latest}", name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published == 2  # the two controllers' API ports


def test_compose_network_has_a_fixed_subnet_apart_from_the_netns_runner() -> None:
    net = compose()["networks"]
    assert isinstance(net, dict)
    viridian = net["viridian"]
    assert "name" not in viridian  # <project>_viridian: one per compose project
    assert viridian["ipam"]["config"] == [{"subnet": "${VIRIDIAN_SUBNET:-172.29.0.0/24}"}]
    assert viridian["driver_opts"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    sys.path.insert(0, str(DEPLOY))
    from netns.network import SUBNET_BASE
    assert not "172.29.".startswith(SUBNET_BASE)


@pytest.mark.parametrize(("texts", "mirror"), [
    (["Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n",
      "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"],
     "http://mirror.example/debian"),
    (["deb [arch=amd64] http://ftp.example.org/debian/ bookworm main\n"],
     "http://ftp.example.org/debian"),
    (["deb https://packages.example.com/apt cloud main\n"], DEFAULT_MIRROR),
    ([], DEFAULT_MIRROR),
], ids=["deb822", "one-line", "not-debian", "none"])
def test_apt_mirror(texts: list[str], mirror: str) -> None:
    assert apt_mirror(texts) == mirror


def test_build_context_has_the_sources_and_no_caches(tmp_path: Path) -> None:
    (tmp_path / "dep-1.0-py3-none-any.whl").write_bytes(b"")
    rels = [rel for rel, _ in context_files(tmp_path)]
    assert "deploy/Dockerfile" in rels and "pyproject.toml" in rels
    assert "deploy/wheels/dep-1.0-py3-none-any.whl" in rels
    assert any(r.startswith("controller/") for r in rels)
    assert not any("__pycache__" in r or r.endswith(".pyc") for r in rels)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """`systemd-analyze verify`: every line it prints is about /opt/viridian not being
    installed on this machine, none about the units' syntax or settings."""
    for unit_file in (DEPLOY / "systemd").glob("*.service"):
        shutil.copy2(unit_file, tmp_path / unit_file.name)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no",
         *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if line.strip() and "/opt/viridian/bin/viridian is not executable" not in line]
    assert complaints == []
