"""`viridian completion SHELL` scripts, and names completed from the controller."""

from __future__ import annotations

import pytest
from cli_fake import FakeController, make_partition
from click.testing import CliRunner
from conftest import Invoke

from controller.cli import cli


@pytest.mark.parametrize(("shell", "needle"), [
    ("bash", "_VIRIDIAN_COMPLETE=bash_complete"),
    ("zsh", "#compdef viridian"),
    ("fish", "_VIRIDIAN_COMPLETE=fish_complete"),
])
def test_scripts(invoke: Invoke, shell: str, needle: str) -> None:
    result = invoke("completion", shell)
    assert result.exit_code == 0, result.stderr
    assert needle in result.stdout


def test_unknown_shell(invoke: Invoke) -> None:
    result = invoke("completion", "tcsh")
    assert result.exit_code == 2 and "bash" in result.stderr


def complete(*words: str) -> list[str]:
    """What bash would be offered for the last word of `viridian WORDS…`."""
    line = ["viridian", *words]
    result = CliRunner().invoke(cli, [], prog_name="viridian", env={
        "_VIRIDIAN_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(line),
        "COMP_CWORD": str(len(line) - 1)}, catch_exceptions=False)
    assert result.exit_code == 0 and not result.stderr, result.stderr
    return [item.split(",", 1)[1] for item in result.stdout.splitlines() if item]


def test_partition_node_and_image_names(fake: FakeController) -> None:
    address = fake.address  # type: ignore[attr-defined]
    for name in ("web", "worker", "db"):
        fake._put(make_partition(name))
    assert complete("--controller", address, "get", "w") == ["web", "worker"]
    assert complete("--controller", address, "stop", "") == ["db", "web", "worker"]
    assert complete("--controller", address, "set", "d") == ["db"]
    assert complete("--controller", address, "node", "cordon", "node-") == ["node-1",
                                                                             "node-2"]
    assert complete("--controller", address, "start", "web", "--node", "") == ["node-1",
                                                                                "node-2"]
    assert complete("--controller", address, "create", "x", "--image", "he") == [
        "hello", "hello:latest"]


def test_names_from_the_context(fake: FakeController) -> None:
    fake._put(make_partition("web"))
    CliRunner().invoke(cli, ["config", "set-context", "c", "--controller",
                             fake.address])  # type: ignore[attr-defined]
    assert complete("get", "") == ["web"]


def test_an_unreachable_controller_completes_nothing_silently(closed_address: str) -> None:
    assert complete("--controller", closed_address, "get", "") == []
    assert complete("--controller", "127.0.0.1:1", "--insecure", "get", "") == []
