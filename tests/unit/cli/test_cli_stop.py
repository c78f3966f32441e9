"""`viridian stop`: Shut Down (the default, or --grace) and Turn Off (--force), against the
in-process fake controller (real gRPC): what the request carries, and the one-line refusal
of both at once."""

from __future__ import annotations

import pytest
from cli_fake import FakeController, make_partition
from conftest import Invoke


@pytest.mark.parametrize(("args", "has_grace", "grace", "force"), [
    ((), False, 0.0, False),                 # the controller's default (10 s)
    (("--grace", "2"), True, 2.0, False),
    (("--grace", "1m30s"), True, 90.0, False),
    (("--grace", "0"), True, 0.0, False),
    (("--force",), False, 0.0, True),
])
def test_stop_sends_the_grace_or_force(invoke: Invoke, fake: FakeController,
                                       args: tuple[str, ...], has_grace: bool, grace: float,
                                       force: bool) -> None:
    fake.partitions["web"] = make_partition("web")
    result = invoke("stop", "web", *args, "--wait")
    assert result.exit_code == 0, result.stderr
    assert "partition web Off" in result.stdout
    [request] = fake.stop_requests
    assert request.name == "web" and request.force == force
    assert request.HasField("grace_seconds") == has_grace
    assert request.grace_seconds == grace


def test_force_and_grace_together_is_one_line(invoke: Invoke, fake: FakeController) -> None:
    fake.partitions["web"] = make_partition("web")
    result = invoke("stop", "web", "--force", "--grace", "5")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "--force" in lines[0] and "--grace" in lines[0]
    assert fake.stop_requests == []  # refused before any call


def test_help_speaks_hyper_v(invoke: Invoke) -> None:
    text = invoke("stop", "--help").stdout
    assert "Shut Down" in text and "Turn Off" in text and "SIGTERM" in text
    assert "--grace SECONDS" in text and "default 10s" in text


def test_a_bad_grace_is_refused_locally(invoke: Invoke, fake: FakeController) -> None:
    fake.partitions["web"] = make_partition("web")
    result = invoke("stop", "web", "--grace", "soon")
    assert result.exit_code == 2 and "invalid duration" in result.stderr
    assert fake.stop_requests == []
