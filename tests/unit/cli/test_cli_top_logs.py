"""`viridian top` (partitions and nodes) and `logs --tail/--since/--timestamps`, against the
fake controller."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from cli_fake import FakeController
from conftest import Invoke
from viridian.v1 import controller_pb2 as c
from viridian.v1 import types_pb2

from controller.cli.partitions import parse_since

GiB, MiB = 1 << 30, 1 << 20
RUNNING, OFF = types_pb2.PARTITION_PHASE_RUNNING, types_pb2.PARTITION_PHASE_OFF


def _stats(fake: FakeController) -> None:
    fake.stats = c.StatsSnapshot(
        partitions=[
            c.PartitionStats(name="idle", node="node-1", phase=RUNNING, vcpus=1,
                             memory_bytes=GiB, cpu_cores=0.01, resident_bytes=900 * MiB,
                             uptime_seconds=3700, measured=True),
            c.PartitionStats(name="busy", node="node-2", phase=RUNNING, vcpus=2,
                             memory_bytes=GiB, cpu_cores=1.5, resident_bytes=256 * MiB,
                             uptime_seconds=65, measured=True),
            c.PartitionStats(name="saved", node="node-1", phase=OFF, vcpus=1,
                             memory_bytes=GiB),
        ],
        nodes=[c.NodeStats(name="node-1", vcpus=4, allocatable_vcpus=16, allocated_vcpus=2,
                           cpu_cores=0.01, memory_bytes=8 * GiB,
                           allocatable_memory_bytes=8 * GiB, allocated_memory_bytes=2 * GiB,
                           resident_bytes=900 * MiB, partitions=1, connected=True),
               c.NodeStats(name="node-2", vcpus=4, allocatable_vcpus=16, allocated_vcpus=2,
                           cpu_cores=1.5, memory_bytes=8 * GiB,
                           allocatable_memory_bytes=8 * GiB, allocated_memory_bytes=GiB,
                           resident_bytes=256 * MiB, partitions=1, connected=True)])


def test_top_once_sorts_by_cpu_then_memory(invoke: Invoke, fake: FakeController) -> None:
    _stats(fake)
    result = invoke("top", "--once")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "NODE", "PHASE", "CPU(cores)", "CPU%", "MEMORY",
                                "MEMORY%", "UPTIME"]
    assert lines[1].split() == ["busy", "node-2", "Running", "1.50", "75%", "256Mi", "25%",
                                "1m5s"]
    assert lines[2].split()[:5] == ["idle", "node-1", "Running", "0.01", "1%"]
    assert lines[2].split()[-1] == "1h1m"
    assert lines[3].split() == ["saved", "node-1", "Off", "-", "-", "-", "-", "-"]
    assert fake.stats_requests[-1].once
    by_memory = invoke("top", "--once", "--sort", "memory").stdout.splitlines()
    assert [line.split()[0] for line in by_memory[1:]] == ["idle", "busy", "saved"]
    invoke("top", "--once", "--node", "node-2")
    assert fake.stats_requests[-1].node == "node-2"


def test_top_nodes(invoke: Invoke, fake: FakeController) -> None:
    _stats(fake)
    lines = invoke("top", "nodes", "--once").stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "CPU(cores)", "CPU%"]
    assert lines[1].split() == ["node-2", "1.50", "38%", "2/16", "256Mi", "3%", "1Gi/8Gi", "1"]
    assert lines[2].split()[0] == "node-1"


def test_top_refreshes_until_the_stream_ends(invoke: Invoke, fake: FakeController) -> None:
    """Not a terminal: one table per snapshot the controller sends (the fake sends two)."""
    _stats(fake)
    result = invoke("top", "--interval", "0.5")
    assert result.exit_code == 0
    assert result.stdout.count("NAME") == 2
    assert not fake.stats_requests[-1].once and fake.stats_requests[-1].interval_ms == 500
    assert invoke("top", "--interval", "0.1").exit_code == 2


def test_top_on_a_terminal_redraws_in_place(invoke: Invoke, fake: FakeController,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import controller.cli.top as top

    _stats(fake)
    monkeypatch.setattr(top, "_interactive", lambda: True)
    result = invoke("top")
    assert result.exit_code == 0, result.output
    assert "busy" in result.stdout and "CPU(cores)" in result.stdout
    assert not fake.stats_requests[-1].once


def test_logs_tail_and_since_reach_the_controller(invoke: Invoke,
                                                   fake: FakeController) -> None:
    assert invoke("create", "w", "--image", "hello").exit_code == 0
    assert invoke("logs", "w", "--tail", "2").exit_code == 0
    assert fake.log_requests[-1].tail_lines == 2 and fake.log_requests[-1].since == 0
    before = time.time()
    assert invoke("logs", "w", "--since", "90s").exit_code == 0
    assert before - 91 < fake.log_requests[-1].since <= time.time() - 89
    assert invoke("logs", "w", "--since", "2026-12-02T08:30:00Z").exit_code == 0
    assert fake.log_requests[-1].since == datetime(2026, 12, 2, 8, 30, tzinfo=UTC).timestamp()
    bad = invoke("logs", "w", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since" in bad.output and "Traceback" not in bad.output
    assert invoke("logs", "w", "--tail", "0").exit_code == 2


def test_logs_timestamps_prefix_each_line(invoke: Invoke, fake: FakeController) -> None:
    assert invoke("create", "w", "--image", "hello").exit_code == 0
    t0 = datetime(2026, 12, 2, 8, 0, 1, 250000, tzinfo=UTC).timestamp()
    fake.logs = [b"one\ntw", b"o\nthree\n"]
    fake.log_times = [t0, t0 + 60]
    out = invoke("logs", "w", "--timestamps").stdout
    assert fake.log_requests[-1].timestamps
    assert out.splitlines() == ["2026-12-02T08:00:01.250000Z one",
                                "2026-12-02T08:00:01.250000Z two",
                                "2026-12-02T08:01:01.250000Z three"]


@pytest.mark.parametrize("text,expected", [("1h", 1000.0 - 3600), ("45", 955.0),
                                           ("1970-01-01T00:10:00", 600.0)])
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=1000.0) == expected
