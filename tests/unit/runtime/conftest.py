"""Fixtures for runtime tests: guest binaries compiled once per session, and a runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, Run, make_root, run_machine


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> GuestBuilder:
    return GuestBuilder(tmp_path_factory.mktemp("guests"))


@pytest.fixture
def run_guest(guest: GuestBuilder, tmp_path: Path) -> Callable[..., Run]:
    """run_guest(name, *args, arch=..., files=..., **machine kwargs) -> Run."""

    def runner(name: str, *args: str, arch: str = "x86_64",
               files: dict[str, bytes] | None = None, **kwargs: object) -> Run:
        root = make_root(tmp_path, guest(name, arch), f"/bin/{name}", files)
        return run_machine(root, f"/bin/{name}", tuple(args), **kwargs)  # type: ignore[arg-type]

    return runner
