from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from cli_fake import FakeController, serve
from click.testing import CliRunner, Result

from controller.cli import cli

Invoke = Callable[..., Result]


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
    """An address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
