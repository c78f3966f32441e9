"""Fixtures for the node agent tests: guest binaries (compiled once) and a real Supervisor
on a temporary run dir (agent_helpers.Node)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_helpers import Node

GUESTS = Path(__file__).resolve().parents[2] / "guests"


@pytest.fixture(scope="session")
def guest_bins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/guests/worker_{stdin,hello}.c compiled static, in one directory (a root)."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build guests")
    root = tmp_path_factory.mktemp("agent-guests")
    for name in ("worker_hello", "worker_stdin"):
        subprocess.run(["gcc", "-O1", "-static", "-o", str(root / name),
                        str(GUESTS / f"{name}.c")], check=True)
    return root


@pytest.fixture
def node_factory(tmp_path: Path, guest_bins: Path) -> Callable[[str], Node]:
    def make(name: str = "node") -> Node:
        return Node(tmp_path / name, guest_bins)

    return make


