"""Contexts in config.yaml ($VIRIDIAN_CONFIG_DIR, set per test by conftest): set-context,
use-context, get-contexts, and the global options falling back to the context."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from cli_fake import CA_PEM, FakeController, make_partition
from click.testing import CliRunner, Result

from controller.cli import cli
from controller.cli.credentials import forget_cluster

TOKEN = "abcdef.0123456789abcdef0123456789abcdef"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def config_file() -> Path:
    return Path(os.environ["VIRIDIAN_CONFIG_DIR"]) / "config.yaml"


def test_set_use_and_list_contexts(fake: FakeController, closed_address: str) -> None:
    address = fake.address  # type: ignore[attr-defined]
    first = run("config", "set-context", "prod", "--controller", address, "-o", "json")
    assert first.exit_code == 0, first.stderr
    assert "(current)" in first.stdout  # the first context becomes the current one
    assert run("config", "set-context", "lab", "--controller",
               f"{closed_address},{address}").exit_code == 0
    data = yaml.safe_load(config_file().read_text())
    assert data["current-context"] == "prod"
    assert data["contexts"]["lab"]["controllers"] == [closed_address, address]
    assert oct(config_file().stat().st_mode & 0o777) == "0o600"
    listed = run("config", "get-contexts").stdout.splitlines()
    assert listed[0].split() == ["CURRENT", "NAME", "CONTROLLERS", "OUTPUT"]
    assert listed[1].split()[:2] == ["lab", f"{closed_address},{address}"]
    assert listed[2].split() == ["*", "prod", address, "json"]
    assert run("config", "current-context").stdout.strip() == "prod"

    switched = run("config", "use-context", "lab")
    assert switched.exit_code == 0 and run("config", "current-context").stdout == "lab\n"
    unknown = run("config", "use-context", "nope")
    assert unknown.exit_code == 1 and "no context 'nope'" in unknown.stderr
    assert "known: lab, prod" in unknown.stderr


def test_commands_use_the_current_context(fake: FakeController, closed_address: str) -> None:
    fake._put(make_partition("web"))
    address = fake.address  # type: ignore[attr-defined]
    run("config", "set-context", "prod", "--controller", address, "--output", "json")
    listed = run("ls")  # no --controller: the context's, and its default output
    assert listed.exit_code == 0, listed.stderr
    assert [p["name"] for p in json.loads(listed.stdout)] == ["web"]
    assert run("ls", "-o", "table").stdout.split()[0] == "NAME"  # a flag still wins

    run("config", "set-context", "down", "--controller", closed_address, "--use")
    down = run("ls")
    assert down.exit_code == 1 and closed_address in down.stderr
    assert run("--controller", address, "ls").exit_code == 0         # the flag wins
    assert run("ls", env={"VIRIDIAN_CONTROLLER": address}).exit_code == 0  # so does env
    assert run("--context", "prod", "ls").exit_code == 0             # another context
    assert run("ls", env={"VIRIDIAN_CONTEXT": "prod"}).exit_code == 0
    missing = run("--context", "nope", "ls")
    assert missing.exit_code == 1 and "no context 'nope' (--context)" in missing.stderr


def test_context_ca_and_token_file(fake: FakeController, tmp_path: Path) -> None:
    address = fake.address  # type: ignore[attr-defined]
    forget_cluster(address)  # nothing saved for the address: only the context knows
    assert "no credentials" in run("--controller", address, "ls").stderr
    (tmp_path / "ca.pem").write_bytes(CA_PEM)
    (tmp_path / "token").write_text(TOKEN + "\n")
    saved = run("config", "set-context", "prod", "--controller", address,
                "--ca", str(tmp_path / "ca.pem"), "--token-file", str(tmp_path / "token"))
    assert saved.exit_code == 0, saved.stderr
    result = run("ls")
    assert result.exit_code == 0, result.stderr
    # Changing one field keeps the others.
    assert run("config", "set-context", "prod", "-o", "yaml").exit_code == 0
    context = yaml.safe_load(config_file().read_text())["contexts"]["prod"]
    assert context == {"controllers": [address], "ca": str(tmp_path / "ca.pem"),
                       "token-file": str(tmp_path / "token"), "output": "yaml"}


def test_set_context_needs_a_controller_when_new() -> None:
    result = run("config", "set-context", "prod")
    assert result.exit_code == 2 and "--controller" in result.stderr


@pytest.mark.parametrize(("text", "needle"), [
    ("contexts: [", "not valid YAML"),
    ("- a\n", "expected a mapping"),
    ("contexts: {p: {controllers: 5}}\n", "controllers must be a list"),
    ("contexts: {p: {controllers: [a:1], output: xml}}\n", "output must be one of"),
    ("contexts: {p: {controllers: [a:1], colour: red}}\n", "unknown key 'colour'"),
    ("current-context: gone\ncontexts: {p: {controllers: [a:1]}}\n", "no context 'gone'"),
])
def test_a_broken_config_is_one_line_and_config_commands_still_fix_it(
        text: str, needle: str) -> None:
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text(text)
    result = run("ls")
    assert result.exit_code == 1
    assert needle in result.stderr and len(result.stderr.splitlines()) == 1
    if needle == "no context 'gone'":
        assert run("config", "use-context", "p").exit_code == 0
        assert run("config", "current-context").stdout == "p\n"


def test_a_broken_config_never_stops_a_server_command(tmp_path: Path) -> None:
    """Servers (up, controller, agent, certs) do not read the CLI's contexts at all."""
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text("contexts: [")
    assert run("ls").exit_code == 1  # a client command reads it, and says it is broken
    result = run("certs", "--out", str(tmp_path / "pki"), "--controller", "c1")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "pki").is_dir()
