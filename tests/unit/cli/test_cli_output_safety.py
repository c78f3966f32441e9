"""The CLI's output layer never prints a control character it received raw: a controller
(or etcd) that hands out an escape sequence cannot reach the operator's terminal with it."""

from __future__ import annotations

import json

import pytest
import yaml
from cli_fake import FakeController, make_node, make_partition, now_ts
from conftest import Invoke
from viridian.v1 import types_pb2

from controller.cli.events import EVENT_COLUMNS, watch_line
from controller.cli.nodes import NODE_COLUMNS, NODE_FIELDS
from controller.cli.output import (
    Column,
    dump,
    labels_text,
    message_data,
    render_item,
    render_list,
    render_table,
)
from controller.cli.partitions import PARTITION_COLUMNS, PARTITION_FIELDS

# Window title, clear screen, 8-bit CSI, bidi override, carriage return, bell, DEL, NUL.
FORGED = "ok\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\rlater\x7f\x00"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\r", "\x7f", "\x00")


def assert_no_raw_controls(text: str) -> None:
    found = [c for c in RAW if c in text]
    assert not found, (found, text)


def forged_event() -> types_pb2.Event:
    return types_pb2.Event(id="9", time=now_ts(1), kind="Partition", object="web",
                           type="Warning", reason="Forged\x1b[2J", message=FORGED,
                           source="node/\x1b[31mnode-1")


def forged_partition() -> types_pb2.Partition:
    part = make_partition(labels={"app": "web\x1b[31m"})
    part.status.reason = FORGED
    part.spec.args.extend(["esc\x1b[2J", "two\nlines"])
    part.spec.env["A"] = "line1\nline2\x1b[2J"
    return part


@pytest.mark.parametrize("fmt", ["table", "wide"])
def test_tables_escape_control_characters_and_keep_one_line_per_row(fmt: str) -> None:
    events = [forged_event(), forged_event()]
    text = render_list(events, EVENT_COLUMNS, fmt)
    assert_no_raw_controls(text)
    assert len(text.splitlines()) == 3  # header + one line per event
    assert "\\x1b]0;pwned\\x07" in text and "\\u202eevil\\rlater" in text
    parts = render_list([forged_partition()], PARTITION_COLUMNS, fmt)
    assert_no_raw_controls(parts)
    assert len(parts.splitlines()) == 2
    cells = render_table(["A", "B"], [["x\ny", "\x1b[2J"]])
    assert cells.splitlines()[1].split() == ["x\\ny", "\\x1b[2J"]


def test_watched_events_are_escaped_line_by_line() -> None:
    shown = [c for c in EVENT_COLUMNS]
    line = watch_line([(c.header, c.value(forged_event())) for c in shown])
    assert_no_raw_controls(line)
    assert "evil" in line


def test_key_value_views_escape_but_keep_their_own_line_structure() -> None:
    text = render_item(forged_partition(), PARTITION_FIELDS, "table")
    assert_no_raw_controls(text)
    env = [line for line in text.splitlines() if line.startswith("Env:")][0]
    # An env value's own newline does not start a new line that could pass for a field.
    assert env.split() == ["Env:", "A=line1\\nline2\\x1b[2J"]
    node = make_node()
    node.spec.labels["zone"] = "a\x1b[2J"
    node.status.reason = FORGED
    node.status.drain.CopyFrom(types_pb2.NodeOperation(
        kind=types_pb2.NodeOperation.KIND_DRAIN, state=types_pb2.NodeOperation.STATE_FAILED,
        message="gave up\x1b[2J", failed={"web": "no room\x1b]0;x\x07"}))
    described = render_item(node, NODE_FIELDS, "table")
    assert_no_raw_controls(described)
    drain = described[described.index("Drain:"):].splitlines()
    assert drain[1].strip() == "gave up\\x1b[2J"          # multi-line fields stay multi-line
    assert drain[2].strip() == "web: FAILED: no room\\x1b]0;x\\x07"
    assert_no_raw_controls(render_list([node], NODE_COLUMNS, "wide"))


def test_columns_and_labels_escape_whatever_their_callers_return() -> None:
    col: Column[str] = Column("X", lambda s: s)
    assert col.value("a\x1b[2Jb\tc\nd") == "a\\x1b[2Jb\tc\nd"
    assert labels_text({"k\n": "v\x1b", "b": "x\ny"}, "\n") == "b=x\\ny\nk\\n=v\\x1b"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_json_and_yaml_escape_control_characters(fmt: str) -> None:
    event, part = forged_event(), forged_partition()
    for item, text in ((event, render_item(event, EVENT_COLUMNS, fmt)),
                       (part, render_item(part, PARTITION_FIELDS, fmt))):
        assert_no_raw_controls(text)
        loaded = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        assert loaded == message_data(item)  # escaped in transit, exact once parsed
    assert_no_raw_controls(dump({"m": FORGED}, fmt))


def test_the_events_command_never_prints_a_forged_sequence_raw(
    fake: FakeController, invoke: Invoke
) -> None:
    fake.events.append(forged_event())
    for args in (["events"], ["events", "-o", "wide"], ["events", "-o", "json"],
                 ["events", "-o", "yaml"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "evil" in result.output
        assert_no_raw_controls(result.output)
