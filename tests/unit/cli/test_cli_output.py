"""The shared formatter: every object kind in every -o format (structure, not whitespace)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from cli_fake import make_explanation, make_node, make_partition, now_ts
from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import types_pb2

from controller.cli import output
from controller.cli.events import EVENT_COLUMNS
from controller.cli.explain import render_explanation
from controller.cli.images import IMAGE_COLUMNS
from controller.cli.nodes import NODE_COLUMNS, NODE_FIELDS
from controller.cli.output import (
    TABLE_CHUNK,
    Column,
    age,
    phase_name,
    print_list,
    render_item,
    render_list,
    render_table,
)
from controller.cli.partitions import PARTITION_COLUMNS, PARTITION_FIELDS

Phase = types_pb2.PartitionPhase


def header(text: str) -> list[str]:
    return text.splitlines()[0].split()


def image() -> types_pb2.Image:
    return types_pb2.Image(name="hello", digest="sha256:" + "cd" * 32, size_bytes=3 << 20,
                           arch=types_pb2.ARCH_X86_64, format="tar", entrypoint="/bin/hello",
                           created_at=now_ts(30))


def event() -> types_pb2.Event:
    return types_pb2.Event(id="1", time=now_ts(5), kind="Partition", object="web",
                           type="Warning", reason="FailedScheduling",
                           message="0/3 nodes available", source="controller")


KINDS: list[tuple[str, Any, Sequence[Column[Any]], list[str], list[str]]] = [
    ("partition", make_partition(labels={"app": "web"}), PARTITION_COLUMNS,
     ["NAME", "PHASE", "NODE", "VCPUS", "MEMORY", "IMAGE", "AGE"],
     ["RESTARTS", "EPOCH", "REASON", "LABELS"]),
    ("node", make_node(zone="a"), NODE_COLUMNS,
     ["NAME", "STATE", "VCPUS", "MEMORY", "PARTITIONS", "CORDONED", "AGE"],
     ["ADDRESS", "ARCHES", "LABELS"]),
    ("image", image(), IMAGE_COLUMNS,
     ["NAME", "TAG", "ARCH", "SIZE", "DIGEST", "USERS", "AGE"],
     ["FORMAT", "SOURCE", "ENTRYPOINT"]),
    ("event", event(), EVENT_COLUMNS, ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"],
     ["SOURCE"]),
]
IDS = [k[0] for k in KINDS]


@pytest.mark.parametrize(("kind", "obj", "columns", "base", "wide"), KINDS, ids=IDS)
def test_table_has_base_columns_and_hides_wide_ones(
    kind: str, obj: Any, columns: Sequence[Column[Any]], base: list[str], wide: list[str]
) -> None:
    text = render_list([obj, obj], columns, "table")
    lines = text.splitlines()
    assert len(lines) == 3
    assert header(text) == base
    assert not any(line.endswith(" ") for line in lines)


@pytest.mark.parametrize(("kind", "obj", "columns", "base", "wide"), KINDS, ids=IDS)
def test_wide_adds_wide_columns(
    kind: str, obj: Any, columns: Sequence[Column[Any]], base: list[str], wide: list[str]
) -> None:
    first = render_list([obj], columns, "wide").splitlines()[0]
    for name in base + wide:
        assert name in first


@pytest.mark.parametrize(("kind", "obj", "columns", "base", "wide"), KINDS, ids=IDS)
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_data_formats_print_api_objects(
    kind: str, obj: Any, columns: Sequence[Column[Any]], base: list[str], wide: list[str],
    fmt: str,
) -> None:
    text = render_list([obj], columns, fmt)
    data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    assert isinstance(data, list) and len(data) == 1
    assert data[0] == output.message_data(obj)


def test_partition_data_uses_proto_names_and_enum_names() -> None:
    part = make_partition(phase=Phase.PARTITION_PHASE_OFF, has_exit_code=True, exit_code=0)
    data = json.loads(render_item(part, PARTITION_FIELDS, "json"))
    assert data["name"] == "web"
    assert data["status"]["phase"] == "PARTITION_PHASE_OFF"
    assert data["status"]["has_exit_code"] is True
    assert data["status"]["exit_code"] == 0  # zero is printed, not dropped
    assert "memory_bytes" in data["spec"] and "memoryBytes" not in data["spec"]


def test_partition_key_value_view() -> None:
    part = make_partition(phase=Phase.PARTITION_PHASE_FAILED, reason="unsupported instruction",
                          labels={"a": "1", "b": "2"})
    text = render_item(part, PARTITION_FIELDS, "table")
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip()
              for line in text.splitlines() if not line.startswith(" ")}
    assert fields["Phase"] == "Failed"
    assert fields["Reason"] == "unsupported instruction"
    assert fields["Exit code"] == "-"
    assert fields["Memory"] == "64Mi"
    assert "Revision" not in fields
    assert "Revision:" in render_item(part, PARTITION_FIELDS, "wide")


def test_node_table_shows_allocated_over_allocatable() -> None:
    text = render_list([make_node(vcpus=4, memory=8 << 30)], NODE_COLUMNS, "table")
    row = text.splitlines()[1].split()
    assert row[:4] == ["node-1", "Ready", "1/16", "64Mi/8Gi"]
    assert "x86_64" in render_item(make_node(), NODE_FIELDS, "table")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (types_pb2.PartitionStatus(phase=Phase.PARTITION_PHASE_RUNNING), "Running"),
        (types_pb2.PartitionStatus(phase=Phase.PARTITION_PHASE_PENDING), "Pending"),
        (types_pb2.PartitionStatus(phase=Phase.PARTITION_PHASE_OFF), "Off"),
        (types_pb2.PartitionStatus(phase=Phase.PARTITION_PHASE_OFF, has_exit_code=True), "Off(0)"),
        (types_pb2.PartitionStatus(phase=Phase.PARTITION_PHASE_OFF, has_exit_code=True,
                                   exit_code=3), "Off(3)"),
        (types_pb2.PartitionStatus(phase=Phase.PARTITION_PHASE_LOST), "Lost"),
        (types_pb2.PartitionStatus(), "Unknown"),
    ],
    ids=["running", "pending", "off", "off-0", "off-3", "lost", "unspecified"],
)
def test_phase_names(status: types_pb2.PartitionStatus, expected: str) -> None:
    assert phase_name(status) == expected


def test_every_phase_has_a_camel_case_name() -> None:
    for value in types_pb2.PartitionPhase.values():
        name = phase_name(types_pb2.PartitionStatus(phase=value))
        assert name.isalpha() and name[0].isupper()


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(5, "5s"), (119, "119s"), (600, "10m"), (3 * 3600, "3h"), (5 * 86400, "5d")],
)
def test_age(seconds: int, expected: str) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(now - timedelta(seconds=seconds))
    assert age(ts, now) == expected
    assert age(Timestamp(), now) == "-"


@pytest.mark.parametrize("fmt", ["table", "wide", "json", "yaml"])
def test_explanation_in_every_format(fmt: str) -> None:
    exp = make_explanation()
    text = render_explanation(exp, fmt)
    if fmt in ("json", "yaml"):
        data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        assert data == output.message_data(exp)
        assert data["chosen_node"] == "node-2"
        return
    lines = text.splitlines()
    assert header(text) == ["NODE", "FITS", "CPU", "MEMORY", "SCORE", "BREAKDOWN"]
    assert lines[1].startswith("* node-2")  # chosen first, marked
    assert "FAIL InsufficientMemory: need 8Gi, free 6Gi of 16Gi" in lines[2]
    assert "binpack 0.80x1=0.80" in lines[1]
    assert lines[-1] == "1/2 nodes available: 1 insufficient memory"
    assert "chosen node node-2" in text


def test_render_list_of_nothing_prints_headers_only() -> None:
    assert header(render_list([], PARTITION_COLUMNS, "table"))[0] == "NAME"
    assert json.loads(render_list([], PARTITION_COLUMNS, "json")) == []


def test_cells_are_not_markup() -> None:
    cols: list[Column[str]] = [Column("X", lambda s: s)]
    assert "[bold]x[/bold]" in render_list(["[bold]x[/bold]"], cols, "table")


def test_public_surface() -> None:
    for name in output.__all__:
        assert isinstance(getattr(output, name), (Callable, tuple, type))  # type: ignore[arg-type]


def test_a_long_table_prints_its_first_rows_before_the_rest_arrive() -> None:
    """`viridian ls` at 100,000 partitions printed nothing until every page had arrived
    (the table measured its columns over all rows first)."""
    pulled = 0
    printed: list[tuple[int, str]] = []   # (rows pulled when printed, text)

    def rows() -> Any:
        nonlocal pulled
        for i in range(2 * TABLE_CHUNK + 7):
            pulled += 1
            yield ("n" * (1 + i // TABLE_CHUNK * 5), str(i))   # names widen in chunk 2

    columns = [Column[tuple[str, str]]("NAME", lambda r: r[0]),
               Column[tuple[str, str]]("INDEX", lambda r: r[1])]
    print_list(rows(), columns, "table", lambda text: printed.append((pulled, text)))
    assert printed[0][0] == TABLE_CHUNK            # the first chunk, before the rest
    lines = [line for _, text in printed for line in text.split("\n")]
    assert lines[0].split() == ["NAME", "INDEX"] and len(lines) == 1 + 2 * TABLE_CHUNK + 7
    assert sum(line.startswith("NAME") for line in lines) == 1
    # columns only widen: within a chunk they line up, and never move left later
    starts = [line.index(line.split()[1]) for line in lines]
    assert starts == sorted(starts)
    assert len({starts[i] for i in range(1, TABLE_CHUNK + 1)}) == 1


def test_a_table_aligns_columns_by_terminal_cells_with_three_spaces_between() -> None:
    text = render_table(["NAME", "NODE", "PHASE"],
                        [["名前", "n1", "Running"], ["abcdef", "", "Off"]], min_widths=[0, 6])
    assert text.splitlines() == [
        "NAME     NODE     PHASE",
        "名前     n1       Running",     # two wide characters fill four cells
        "abcdef            Off",
    ]
