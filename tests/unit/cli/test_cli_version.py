"""`viridian version`, and one version everywhere (pyproject, controller, agent)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from cli_fake import FakeController
from conftest import Invoke

from controller.version import VERSION
from node_agent.agent import VERSION as AGENT_VERSION

ROOT = Path(__file__).parents[3]


def test_one_version_everywhere() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert VERSION == project["version"] == AGENT_VERSION


def test_version_table(invoke: Invoke, fake: FakeController) -> None:
    fake.change_node("node-1", lambda n: setattr(n.spec, "agent_version", VERSION))
    fake.change_node("node-2", lambda n: setattr(n.spec, "agent_version", "0.0.9"))
    result = invoke("version")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Client:      {VERSION} (API viridian.v1)"
    assert lines[1].startswith("Controller:  0.1.0 (API viridian.v1) at 127.0.0.1:")
    assert [line.split() for line in lines[3:]] == [["NODE", "VERSION"], ["node-1", VERSION],
                                                    ["node-2", "0.0.9"]]
    assert "versions differ" in result.stderr


def test_version_json_and_client_only(invoke: Invoke, fake: FakeController) -> None:
    data = json.loads(invoke("version", "-o", "json").stdout)
    assert data["client"]["version"] == VERSION
    assert data["controller"]["version"] == "0.1.0"
    assert data["agents"] == {"node-1": "", "node-2": ""}
    only = invoke("version", "--client")
    assert only.stdout.strip() == f"Client:      {VERSION} (API viridian.v1)"


def test_an_older_controller_without_get_version(invoke: Invoke, fake: FakeController) -> None:
    fake.controller_version = None
    result = invoke("version")
    assert result.exit_code == 0, result.stderr
    assert "Controller:  unknown (it does not answer GetVersion" in result.stdout


def test_version_without_a_controller(closed_address: str) -> None:
    from click.testing import CliRunner

    from controller.cli import cli

    result = CliRunner().invoke(cli, ["--controller", closed_address, "version"])
    assert result.exit_code == 1 and "cannot reach the controller" in result.stderr
    client = CliRunner().invoke(cli, ["--controller", closed_address, "version", "--client"])
    assert client.exit_code == 0 and VERSION in client.stdout
