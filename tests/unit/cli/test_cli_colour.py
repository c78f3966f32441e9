"""Colour on a terminal only: real `viridian` processes writing to a pseudo-terminal, to a
pipe, and with NO_COLOR; and the painting itself keeps tables aligned."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from cli_fake import FakeController, make_partition
from viridian.v1 import types_pb2

from controller.cli.colour import (
    enabled,
    paint_field,
    paint_status,
    paint_table,
    status_columns,
)
from controller.cli.output import render_table

ROOT = Path(__file__).parents[3]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
GREEN_RUNNING = click.style("Running", fg="green")
RED_ERROR = click.style("error:", fg="red", bold=True)


def run_cli(args: list[str], *, tty: str, no_color: bool = False) -> tuple[int, str, str]:
    """Run viridian with stdout and/or stderr ("out", "err", "none") on a pseudo-terminal;
    return (status, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    if no_color:
        env["NO_COLOR"] = "1"
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", *args], env=env,
            stdout=slave if tty == "out" else subprocess.PIPE,
            stderr=slave if tty == "err" else subprocess.PIPE)
        os.close(slave)
        on_tty = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            on_tty += chunk
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    text = on_tty.decode().replace("\r\n", "\n")
    stdout = text if tty == "out" else out.decode()
    stderr = text if tty == "err" else err.decode()
    return proc.returncode, stdout, stderr


@pytest.fixture
def cluster(fake: FakeController) -> str:
    fake._put(make_partition("web"))
    fake._put(make_partition("db", phase=types_pb2.PARTITION_PHASE_FAILED))
    return fake.address  # type: ignore[attr-defined, no-any-return]


def test_phases_coloured_on_a_terminal(cluster: str) -> None:
    code, out, _ = run_cli(["--controller", cluster, "ls"], tty="out")
    assert code == 0
    assert GREEN_RUNNING in out and click.style("Failed", fg="red", bold=True) in out
    plain = ANSI.sub("", out).splitlines()
    assert plain[0].index("PHASE") == plain[1].index("Failed") == plain[2].index("Running")


def test_get_colours_the_phase_and_node_state(cluster: str) -> None:
    code, out, _ = run_cli(["--controller", cluster, "get", "db"], tty="out")
    assert code == 0
    phase = next(line for line in out.splitlines() if line.startswith("Phase:"))
    assert phase.endswith(click.style("Failed", fg="red", bold=True))
    code, out, _ = run_cli(["--controller", cluster, "node", "get", "node-1"], tty="out")
    assert code == 0
    state = next(line for line in out.splitlines() if line.startswith("State:"))
    assert state.endswith(click.style("Ready", fg="green"))
    code, out, _ = run_cli(["--controller", cluster, "get", "db"], tty="none")
    assert code == 0 and "\x1b[" not in out


def test_no_colour_when_piped_or_with_no_color(cluster: str) -> None:
    code, out, _ = run_cli(["--controller", cluster, "ls"], tty="none")
    assert code == 0 and "Running" in out and "\x1b[" not in out
    code, out, _ = run_cli(["--controller", cluster, "ls"], tty="out", no_color=True)
    assert code == 0 and "Running" in out and "\x1b[" not in out
    code, out, _ = run_cli(["--controller", cluster, "ls", "-o", "json"], tty="out")
    assert code == 0 and "\x1b[" not in out


def test_errors_coloured_on_a_terminal(closed_address: str) -> None:
    code, _, err = run_cli(["--controller", closed_address, "ls"], tty="err")
    assert code == 1 and err.startswith(RED_ERROR + " cannot reach")
    code, _, err = run_cli(["--controller", closed_address, "ls"], tty="err", no_color=True)
    assert code == 1 and err.startswith("error: cannot reach")
    code, _, err = run_cli(["--controller", closed_address, "ls"], tty="none")
    assert code == 1 and err.startswith("error: cannot reach")


def test_painting_keeps_alignment() -> None:
    table = render_table(["NAME", "PHASE", "NODE"], [["a", "Off(0)", "n1"],
                                                    ["b", "Running", "n2"],
                                                    ["c", "Weird", "n3"]])
    painted = paint_table(table)
    assert ANSI.sub("", painted) == table
    assert GREEN_RUNNING in painted and "Weird" in painted
    columns = status_columns(table.splitlines()[0])
    assert paint_status("d      Failed   n1", columns).count("\x1b[") == 3  # red, bold, reset
    assert status_columns("NAME   NODE") == []
    view = "Name:    a\nPhase:   Running\nReason:  Running"
    painted_view = paint_field(view, "Phase", "PHASE")
    assert ANSI.sub("", painted_view) == view
    assert painted_view.splitlines()[1] == "Phase:   " + GREEN_RUNNING
    assert painted_view.splitlines()[2] == "Reason:  Running"  # only the field named


def test_enabled_follows_the_stream_and_no_color(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal, \
                open(tmp_path / "file", "w") as regular:
            monkeypatch.delenv("NO_COLOR", raising=False)
            monkeypatch.setenv("TERM", "xterm")
            assert enabled(terminal) and not enabled(regular) and not enabled(None)
            monkeypatch.setenv("NO_COLOR", "1")
            assert not enabled(terminal)
            monkeypatch.setenv("NO_COLOR", "")  # empty: as if unset (no-color.org)
            assert enabled(terminal)
            monkeypatch.setenv("TERM", "dumb")
            assert not enabled(terminal)
    finally:
        os.close(master)
        os.close(slave)
