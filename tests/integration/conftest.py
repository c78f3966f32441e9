"""Integration fixtures: compiled guests and a shared real cluster (see itutil.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from itutil import GUEST_BUILDS, GUESTS, ClusterHandle, compile_guest, running_cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of a static ELF built from tests/guests/."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("guests")
    return {name: compile_guest(GUESTS / src, out / name, *flags)
            for name, (src, flags) in GUEST_BUILDS.items()}


@pytest.fixture(scope="session")
def cluster(guests: dict[str, Path]) -> Iterator[ClusterHandle]:
    """One 2-node cluster shared by the tests that do not break it (distinct names!)."""
    yield from running_cluster("vit-shared-", guests)
