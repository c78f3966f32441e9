from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_fake import CA_PEM, FakeController, serve
from click.testing import CliRunner, Result

from controller.cli import cli
from controller.cli.credentials import save_cluster

Invoke = Callable[..., Result]


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI credentials in a per-test directory, never the user's ~/.config."""
    monkeypatch.setenv("VIRIDIAN_CONFIG_DIR", str(tmp_path / "viridian-config"))


@pytest.fixture
def fake() -> Iterator[FakeController]:
    servicer = FakeController()
    server, address = serve(servicer)
    servicer.address = address  # type: ignore[attr-defined]
    yield servicer
    server.stop(grace=None)


@pytest.fixture
def invoke(fake: FakeController) -> Invoke:
    """Run the CLI against the fake controller: invoke("ls", "-o", "json")."""

    def run(*args: str, input: str | bytes | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(cli, ["--controller", fake.address, *args],  # type: ignore[attr-defined]
                             input=input, catch_exceptions=False)

    return run


@pytest.fixture
def closed_address() -> str:
    """An address nothing listens on (a cluster the CLI has credentials for, now down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    save_cluster(address, CA_PEM, "abcdef.0123456789abcdef0123456789abcdef")
    return address
