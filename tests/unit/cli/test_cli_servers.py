"""Server commands only parse options and hand over to the server code (faked here)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from controller.cli import cli


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    @dataclass
    class AgentConfig:
        controllers: list[str]
        name: str
        vcpus: int | None
        memory_bytes: int | None
        labels: dict[str, str] = field(default_factory=dict)
        run_dir: Path = Path(".")
        address: str = ""
        state_listen: str = "127.0.0.1:0"
        tls: Any = None
        image_cache_bytes: int = 0
        metrics_listen: str = ""

    def module(name: str, **attrs: Any) -> None:
        mod = types.ModuleType(name)
        for key, value in attrs.items():
            setattr(mod, key, value)
        monkeypatch.setitem(sys.modules, name, mod)

    module("controller.embedded",
           run_embedded_cluster=lambda **kw: seen.append(("up", kw)) or 0)
    from controller.server import ControllerConfig

    module("controller.server", ControllerConfig=ControllerConfig,
           run_controller=lambda config, *log: seen.append(("controller", config)) or
           LOGGED.append(log) or 3)
    module("node_agent.agent", AgentConfig=AgentConfig,
           run_agent=lambda cfg, *log: seen.append(("agent", cfg)) or LOGGED.append(log) or 0)
    monkeypatch.delenv("VIRIDIAN_LOG", raising=False)
    LOGGED.clear()
    return seen


LOGGED: list[tuple[Any, ...]] = []   # the (log format, log level) each server was given


def test_up(calls: list[tuple[str, Any]], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["up", "--nodes", "3", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert calls == [("up", {"nodes": 3, "data_dir": tmp_path, "listen": "127.0.0.1:50051",
                             "insecure": False, "etcd_quota": 2 << 30, "web_listen": "",
                             "metrics": True,
                             "log_flags": ("--log-format", "text", "--log-level", "INFO")})]
    CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path), "--etcd-quota", "64Mi"])
    assert calls[1][1]["etcd_quota"] == 64 << 20
    bad = CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path), "--etcd-quota", "lots"])
    assert bad.exit_code == 2 and "--etcd-quota" in bad.stderr and len(calls) == 2
    CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path), "--web-listen", "off"])
    assert calls[2][1]["web_listen"] == "off"


def test_up_default_data_dir(calls: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch,
                             tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert CliRunner().invoke(cli, ["up"]).exit_code == 0
    assert calls[0][1]["data_dir"] == tmp_path / ".local" / "share" / "viridian"
    assert calls[0][1]["nodes"] == 2


def test_controller_passes_only_given_options(calls: list[tuple[str, Any]]) -> None:
    result = CliRunner().invoke(cli, ["controller", "--listen", "0.0.0.0:50051",
                                      "--etcd", "a:2379,b:2379", "--insecure"])
    assert result.exit_code == 3  # the server's return code is the exit code
    config = calls[0][1]
    assert (config.listen, config.etcd_endpoints) == ("0.0.0.0:50051", ["a:2379", "b:2379"])
    assert config.lease_ttl == 3 and config.prefix == "/viridian"  # the server's defaults
    assert config.tls is None and config.etcd_tls is None
    assert "--insecure" in result.stderr
    CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1", "--insecure",
                             "--lease-ttl", "5", "--prefix", "/v2"])
    assert calls[1][1].lease_ttl == 5 and calls[1][1].prefix == "/v2"
    assert (config.compact_every, config.max_events) == (300, 10000)  # the defaults
    CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1", "--insecure",
                             "--compact-every", "60", "--max-events", "500"])
    assert (calls[2][1].compact_every, calls[2][1].max_events) == (60, 500)
    bad = CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1",
                                   "--insecure", "--max-events", "0"])
    assert bad.exit_code == 2 and "--max-events" in bad.stderr and len(calls) == 3
    assert config.web_listen == ""  # no web console unless asked
    CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1", "--insecure",
                             "--web-listen", "127.0.0.1:8080"])
    assert calls[3][1].web_listen == "127.0.0.1:8080"
    for wrong in ("8080", "host:", "host:http", "h:70000"):
        bad = CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1",
                                       "--insecure", "--web-listen", wrong])
        assert bad.exit_code == 2 and "--web-listen" in bad.stderr, wrong
    assert len(calls) == 4


def test_controller_needs_certificates_or_insecure(calls: list[tuple[str, Any]],
                                                   tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1"])
    assert result.exit_code == 2 and "--pki-dir is required" in result.stderr
    assert calls == []
    certs = CliRunner().invoke(cli, ["certs", "--out", str(tmp_path), "--controller", "c1=h1"])
    assert certs.exit_code == 0, certs.output
    result = CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "https://e:1",
                                      "--pki-dir", str(tmp_path / "controller-c1")])
    assert result.exit_code == 3, result.output
    config = calls[0][1]
    assert config.tls is not None and config.etcd_tls is config.tls
    assert config.ca is not None  # it can sign joins
    assert [role for _, role in config.bootstrap_tokens] == [1]  # the admin token


def test_agent(calls: list[tuple[str, Any]], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "--controller", "c1:1,c2:1", "agent", "--name", "n1", "--memory", "2Gi",
        "--label", "zone=a", "--run-dir", str(tmp_path), "--insecure"])
    assert result.exit_code == 0, result.output
    cfg = calls[0][1]
    assert cfg.controllers == ["c1:1", "c2:1"]  # the global --controller by default
    assert (cfg.name, cfg.vcpus, cfg.memory_bytes) == ("n1", None, 2 << 30)
    assert cfg.labels == {"zone": "a"} and cfg.run_dir == tmp_path and cfg.tls is None
    assert cfg.image_cache_bytes == 20 << 30
    CliRunner().invoke(cli, ["agent", "--controller", "x:1", "--name", "n2", "--vcpus", "2",
                             "--insecure", "--image-cache-size", "512Mi"])
    assert calls[1][1].controllers == ["x:1"] and calls[1][1].vcpus == 2
    assert calls[1][1].image_cache_bytes == 512 << 20
    result = CliRunner().invoke(cli, ["agent", "--controller", "x:1", "--name", "n3",
                                      "--insecure", "--image-cache-size", "0"])
    assert result.exit_code == 2 and "--image-cache-size" in result.stderr
    assert len(calls) == 2
    assert calls[1][1].state_listen == "127.0.0.1:0" and calls[1][1].address == ""
    CliRunner().invoke(cli, ["agent", "--controller", "x:1", "--name", "n3", "--insecure",
                             "--state-listen", "0.0.0.0:50060", "--address", "n3.lan:50060"])
    assert (calls[2][1].state_listen, calls[2][1].address) == ("0.0.0.0:50060", "n3.lan:50060")


def test_agent_needs_a_certificate_or_a_join_token(calls: list[tuple[str, Any]],
                                                   tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["agent", "--controller", "x:1", "--name", "n1",
                                      "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--join-token" in result.stderr
    CliRunner().invoke(cli, ["certs", "--out", str(tmp_path / "pki"), "--node", "n1"])
    result = CliRunner().invoke(cli, ["agent", "--controller", "x:1", "--name", "n1",
                                      "--pki-dir", str(tmp_path / "pki" / "node-n1")])
    assert result.exit_code == 0, result.output
    assert calls[0][1].tls is not None and b"BEGIN CERTIFICATE" in calls[0][1].tls.cert_pem


def test_log_and_metrics_flags(calls: list[tuple[str, Any]], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    ok = CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1", "--insecure",
                                  "--log-format", "json", "--log-level", "debug",
                                  "--metrics-listen", "127.0.0.1:9100"])
    assert ok.exit_code == 3, ok.output
    assert calls[-1][1].metrics_listen == "127.0.0.1:9100"
    assert LOGGED[-1] == ("json", "DEBUG")
    monkeypatch.setenv("VIRIDIAN_LOG", "warning")
    CliRunner().invoke(cli, ["agent", "--controller", "x:1", "--name", "n1", "--insecure",
                             "--run-dir", str(tmp_path), "--metrics-listen", "[::1]:0"])
    assert calls[-1][1].metrics_listen == "[::1]:0" and LOGGED[-1] == ("text", "WARNING")
    up = CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path), "--no-metrics",
                                  "--log-format", "json"])
    assert up.exit_code == 0, up.output
    assert calls[-1][1]["metrics"] is False
    assert calls[-1][1]["log_flags"] == ("--log-format", "json", "--log-level", "WARNING")
    count = len(calls)
    monkeypatch.setenv("VIRIDIAN_LOG", "chatty")
    bad = CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1",
                                   "--insecure"])
    assert bad.exit_code == 2 and "VIRIDIAN_LOG" in bad.stderr
    assert "Traceback" not in bad.output
    monkeypatch.delenv("VIRIDIAN_LOG")
    for flags in (["--log-format", "xml"], ["--log-level", "loud"],
                  ["--metrics-listen", "nowhere"]):
        bad = CliRunner().invoke(cli, ["controller", "--listen", "x:1", "--etcd", "e:1",
                                       "--insecure", *flags])
        assert bad.exit_code == 2 and flags[0] in bad.stderr, bad.output
    assert len(calls) == count
