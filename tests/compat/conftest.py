"""Fixtures for the compatibility table: program builder and reference runner per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compat_runner import ProgramBuilder, Reference  # noqa: E402


@pytest.fixture(scope="session")
def compat_build(tmp_path_factory: pytest.TempPathFactory) -> ProgramBuilder:
    return ProgramBuilder(tmp_path_factory.mktemp("compat-programs"))


@pytest.fixture(scope="session")
def compat_reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return Reference(tmp_path_factory.mktemp("compat-qemu"))
