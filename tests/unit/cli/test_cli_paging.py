"""List commands read every page of a paged list (ls, nodes, events), against the fake
controller, which pages as the real one does (page_size, opaque tokens, "" at the end)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from cli_fake import FakeController, make_node, make_partition, now_ts
from conftest import Invoke
from viridian.v1 import types_pb2

from controller.cli.client import paged
from controller.cli.errors import CliError
from controller.cli.output import print_list, render_list
from controller.cli.partitions import PARTITION_COLUMNS

Phase = types_pb2.PartitionPhase


def _fill(fake: FakeController, count: int) -> list[str]:
    names = [f"p-{i:05d}" for i in range(count)]
    for name in names:
        fake.partitions[name] = make_partition(name, labels={"tier": "a"})
    return names


def test_ls_reads_every_page(invoke: Invoke, fake: FakeController) -> None:
    names = _fill(fake, 1203)
    result = invoke("ls")
    assert result.exit_code == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].startswith("NAME") and [r.split()[0] for r in rows[1:]] == names
    assert fake.page_tokens == ["", "@500", "@1000"]  # three pages, each token followed


def test_ls_json_and_yaml_are_one_list_of_every_page(invoke: Invoke,
                                                     fake: FakeController) -> None:
    names = _fill(fake, 1001)
    got = json.loads(invoke("ls", "-o", "json", "-l", "tier=a").stdout)
    assert [p["name"] for p in got] == names
    assert got[0]["spec"]["labels"] == {"tier": "a"}
    assert fake.page_tokens == ["", "@500", "@1000"]
    got = yaml.safe_load(invoke("ls", "-o", "yaml").stdout)
    assert [p["name"] for p in got] == names


def test_ls_passes_phase_and_prefix_to_the_server(invoke: Invoke,
                                                  fake: FakeController) -> None:
    _fill(fake, 30)
    fake.partitions["p-00012"].status.phase = Phase.PARTITION_PHASE_FAILED
    fake.partitions["p-00025"].status.phase = Phase.PARTITION_PHASE_FAILED
    got = json.loads(invoke("ls", "-o", "json", "--phase", "Failed").stdout)
    assert [p["name"] for p in got] == ["p-00012", "p-00025"]
    got = json.loads(invoke("ls", "-o", "json", "--prefix", "p-0001").stdout)
    assert [p["name"] for p in got] == [f"p-{i:05d}" for i in range(10, 20)]
    got = json.loads(invoke("ls", "-o", "json", "--prefix", "p-0002", "--phase",
                            "failed").stdout)
    assert [p["name"] for p in got] == ["p-00025"]
    bad = invoke("ls", "--phase", "sleeping")
    assert bad.exit_code == 2 and "'sleeping' is not one of" in bad.stderr


def test_an_empty_list_is_an_empty_json_list(invoke: Invoke, fake: FakeController) -> None:
    assert json.loads(invoke("ls", "-o", "json").stdout) == []
    assert yaml.safe_load(invoke("ls", "-o", "yaml").stdout) == []
    assert fake.page_tokens == ["", ""]


def test_nodes_read_every_page(invoke: Invoke, fake: FakeController) -> None:
    fake.page_size = 2
    for i in range(3, 8):
        fake.nodes[f"node-{i}"] = make_node(f"node-{i}")
    got = json.loads(invoke("nodes", "-o", "json").stdout)
    assert [n["name"] for n in got] == [f"node-{i}" for i in range(1, 8)]
    assert fake.page_tokens == ["", "@2", "@4", "@6"]
    table = invoke("nodes").stdout.splitlines()
    assert len(table) == 8 and table[-1].startswith("node-7")


def test_events_read_every_page_then_filter_and_limit(invoke: Invoke,
                                                      fake: FakeController) -> None:
    fake.page_size = 2
    fake.events = [types_pb2.Event(id=str(i), time=now_ts(10 - i), object=f"o{i}",
                                   kind="Audit" if i % 3 == 0 else "Partition",
                                   reason=f"R{i}", message="m")
                   for i in range(1, 10)]
    got = json.loads(invoke("events", "-o", "json").stdout)
    assert [e["id"] for e in got] == ["1", "2", "4", "5", "7", "8"]  # audit records apart
    assert fake.page_tokens == ["", "@2", "@4", "@6", "@8"]
    newest = json.loads(invoke("events", "-o", "json", "--limit", "2").stdout)
    assert [e["id"] for e in newest] == ["7", "8"]  # the newest 2 of every page, not page 1
    audit = json.loads(invoke("events", "-o", "json", "--audit").stdout)
    assert [e["id"] for e in audit] == ["3", "6", "9"]


def test_a_server_that_repeats_a_token_ends_the_listing() -> None:
    """A server that loops (the same token twice) ends the command with a CliError (one
    line), not an endless listing."""
    from viridian.v1 import controller_pb2 as c

    calls: list[str] = []

    def fetch(token: str) -> c.ListNodesResponse:
        calls.append(token)
        return c.ListNodesResponse(nodes=[make_node()], next_page_token="again")

    with pytest.raises(CliError, match="same page token twice"):
        list(paged(fetch, lambda r: r.nodes))
    assert calls == ["", "again"]


def test_print_list_prints_json_items_as_they_arrive() -> None:
    """Each item is written before the next one is fetched, and the whole text is exactly
    what render_list makes of the same list (JSON and YAML)."""
    parts = [make_partition(f"p{i}") for i in range(3)]
    log: list[str] = []

    def arriving() -> Iterator[types_pb2.Partition]:
        for p in parts:
            log.append(f"fetch {p.name}")
            yield p

    out: list[str] = []

    def echo(text: str = "", nl: bool = True) -> None:
        log.append("echo")
        out.append(text + ("\n" if nl else ""))

    for fmt in ("json", "yaml"):
        log.clear()
        out.clear()
        print_list(arriving(), PARTITION_COLUMNS, fmt, echo)
        assert log[:4] == ["fetch p0", "echo", "fetch p1", "echo"]
        assert "".join(out) == render_list(parts, PARTITION_COLUMNS, fmt) + "\n"
