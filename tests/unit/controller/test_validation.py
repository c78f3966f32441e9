"""Hostile input at the controller's doors: the public API refuses strings and lists that
make no sense (INVALID_ARGUMENT, one line), the gateway refuses a node's absurd capacity,
and text an agent reports reaches neither etcd nor a terminal with control characters."""

from __future__ import annotations

import io
import math
import tarfile
from collections.abc import Iterator

import grpc
import pytest
from click.testing import CliRunner
from inproc import Api, FakeAgent, code_of, compile_hello, create, get, push, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.cli import cli
from controller.cli.events import EVENT_COLUMNS
from controller.cli.output import render_list

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GI, TI = 1 << 30, 1 << 40
# What a forged report tries to get onto an operator's terminal: set the window title,
# clear the screen, an 8-bit CSI, a bidi override and a carriage return over the line.
FORGED = "ok\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\rlater"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


@pytest.fixture(scope="module")
def api(etcd_endpoint: str) -> Iterator[Api]:
    yield from replica(etcd_endpoint)


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


def partition_names(api: Api) -> set[str]:
    return {p.name for p in api.stub.ListPartitions(cpb.ListPartitionsRequest()).partitions}


def node_names(api: Api) -> set[str]:
    return {n.name for n in api.stub.ListNodes(cpb.ListNodesRequest()).nodes}


def assert_one_clean_line(message: str) -> None:
    assert "\n" not in message and not any(c in message for c in RAW_CONTROLS), message


# -- 1. partitions -----------------------------------------------------------------------

BAD_SPECS = [
    pytest.param("nul-arg", {"args": ["a\0b"]}, "NUL", id="NUL-in-an-argument"),
    pytest.param("nul-env", {"env": {"K": "v\0w"}}, "NUL", id="NUL-in-an-env-value"),
    pytest.param("nul-env-key", {"env": {"K\0": "v"}}, "environment", id="NUL-in-an-env-name"),
    pytest.param("many-args", {"args": ["x"] * 4097}, "4096", id="4097-arguments"),
    pytest.param("many-items", {"args": ["x"] * 2049, "env": {f"E{i}": "" for i in range(2048)}},
                 "4096", id="args+env-4097-items"),
    pytest.param("big-args", {"args": ["x" * (64 << 10), "y" * (64 << 10)]}, "128Ki",
                 id="args-over-128Ki"),
    pytest.param("ctl-label", {"labels": {"app": "web\x1b[31m"}}, "label", id="ESC-in-a-label"),
    pytest.param("nl-label-key", {"labels": {"app\n": "web"}}, "label", id="newline-label-key"),
    pytest.param("nul-label", {"labels": {"app": "a\0"}}, "label", id="NUL-in-a-label"),
    pytest.param("dash-label", {"labels": {"app": "-web"}}, "label",
                 id="label-value-not-alphanumeric-at-the-ends"),
    pytest.param("long-label", {"labels": {"app": "v" * 64}}, "63", id="label-value-64"),
    pytest.param("long-key", {"labels": {"k" * 64: "v"}}, "63", id="label-name-64"),
    pytest.param("long-prefix", {"labels": {"a" * 254 + "/k": "v"}}, "253",
                 id="label-prefix-254"),
    pytest.param("bad-prefix", {"labels": {"Bad_Prefix/k": "v"}}, "prefix",
                 id="label-prefix-not-dns"),
    pytest.param("two-slashes", {"labels": {"a/b/c": "v"}}, "label", id="label-two-slashes"),
    pytest.param("many-labels", {"labels": {f"k{i}": "v" for i in range(65)}}, "64",
                 id="65-labels"),
    pytest.param("tab-selector", {"node_selector": {"zone": "a\tb"}}, "node selector",
                 id="tab-in-a-node-selector"),
    pytest.param("many-selectors", {"node_selector": {f"k{i}": "v" for i in range(65)}}, "64",
                 id="65-node-selectors"),
    pytest.param("nl-group", {"anti_affinity_group": "g\n"}, "anti-affinity group",
                 id="newline-in-a-group"),
    pytest.param("nl-image", {"image": "hello\n"}, "image", id="newline-in-an-image-name"),
    pytest.param("nul-image", {"image": "hel\0lo"}, "image", id="NUL-in-an-image-name"),
    pytest.param("nl-node", {"node": "node-1\n"}, "node", id="newline-in-the-old-node-pin"),
    pytest.param("tiny-disk", {"disk_bytes": (1 << 20) - 1}, "disk", id="disk-under-1Mi"),
    pytest.param("huge-disk", {"disk_bytes": (1 << 40) + 1}, "disk", id="disk-over-1Ti"),
    pytest.param("many-procs", {"max_processes": 4097}, "max_processes",
                 id="process-limit-over-4096"),
]


@pytest.mark.parametrize(("name", "spec", "needle"), BAD_SPECS)
def test_partitions_with_hostile_strings_or_lists_are_refused(
    api: Api, name: str, spec: dict[str, object], needle: str
) -> None:
    code, msg = code_of(lambda: create(api, name, **spec))
    assert code == INVALID, msg
    assert needle in msg
    assert_one_clean_line(msg)
    assert name not in partition_names(api)


def test_100k_labels_are_refused(api: Api) -> None:
    labels = {f"k{i}": "v" for i in range(100_000)}
    code, msg = code_of(lambda: create(api, "lots-of-labels", labels=labels))
    assert code == INVALID and "64" in msg and len(msg) < 200


@pytest.mark.parametrize("name", ["web\n", "web\0", "w\x1beb", "WEB", "-web"])
def test_partition_names_with_control_characters_are_refused(api: Api, name: str) -> None:
    code, msg = code_of(lambda: create(api, name))
    assert code == INVALID and "DNS label" in msg
    assert_one_clean_line(msg)


def test_what_execve_and_kubernetes_accept_is_accepted(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    labels = {f"k{i}": "v" for i in range(62)}
    labels |= {"app.kubernetes.io/name": "web_1.x", "empty": ""}
    p = create(api, "execve-ok", args=["tab\there", "new\nline", "esc\x1b", "ünï"],
               env={"A": "line1\nline2", "B\x01": "x"}, labels=labels,
               node_selector={"viridian.io/node": "node-1"}, anti_affinity_group="g1",
               desired_state=pb.DESIRED_STATE_OFF)
    assert list(p.spec.args) == ["tab\there", "new\nline", "esc\x1b", "ünï"]
    assert len(p.spec.labels) == 64
    items = create(api, "items-ok", args=["x"] * 2048, env={f"E{i}": "" for i in range(2048)},
                   desired_state=pb.DESIRED_STATE_OFF)
    assert len(items.spec.args) == 2048
    for name, disk in (("disk-default", 0), ("disk-min", 1 << 20), ("disk-max", 1 << 40)):
        assert create(api, name, disk_bytes=disk,
                      desired_state=pb.DESIRED_STATE_OFF).spec.disk_bytes == disk
    for name, limit in (("procs-default", 0), ("procs-one", 1), ("procs-max", 4096)):
        assert create(api, name, max_processes=limit,
                      desired_state=pb.DESIRED_STATE_OFF).spec.max_processes == limit


def test_a_checkpoint_name_with_a_newline_is_refused(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    create(api, "cp-name", desired_state=pb.DESIRED_STATE_OFF)
    code, msg = code_of(lambda: api.stub.CreateCheckpoint(
        cpb.CheckpointRequest(name="cp-name", checkpoint="cp\n")))
    assert code == INVALID and "checkpoint" in msg
    assert not get(api, "cp-name").status.checkpoints


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _push_with(api: Api, header: cpb.ImageHeader, content: bytes) -> pb.Image:
    header.size_bytes = len(content)
    return api.stub.PushImage(iter([cpb.PushImageRequest(header=header),
                                    cpb.PushImageRequest(chunk=content)]))


def test_image_entrypoints_and_digests_are_checked(api: Api, elf: bytes) -> None:
    # A tar can hold a member whose name carries an escape sequence; the entrypoint naming
    # it must still be refused (it would be stored and printed).
    forged = "bin/\x1b[31mhello"
    content = _tar({forged: elf, "bin/hello": elf})
    code, msg = code_of(lambda: _push_with(api, cpb.ImageHeader(
        name="esc-entry", format="tar", entrypoint="/" + forged), content))
    assert code == INVALID and "entrypoint" in msg
    assert_one_clean_line(msg)
    long_part = "/bin/" + "x" * 256
    code, msg = code_of(lambda: _push_with(api, cpb.ImageHeader(
        name="long-entry", format="tar", entrypoint=long_part), content))
    assert code == INVALID and "255" in msg
    code, msg = code_of(lambda: _push_with(api, cpb.ImageHeader(
        name="bad-digest", format="tar", entrypoint="/bin/hello",
        digest="sha256:\x1b[2J" + "0" * 60), content))
    assert code == INVALID and "digest" in msg
    assert_one_clean_line(msg)
    image = _push_with(api, cpb.ImageHeader(name="good-tar", format="tar",
                                            entrypoint="/bin/hello"), content)
    assert image.entrypoint == "/bin/hello"
    images = {i.name for i in api.stub.ListImages(cpb.ListImagesRequest()).images}
    assert {"esc-entry", "long-entry", "bad-digest"}.isdisjoint(images)


# -- 2. node registration ------------------------------------------------------------------


def _spec(**fields: object) -> pb.NodeSpec:
    base: dict[str, object] = {"vcpus": 4, "memory_bytes": 4 * GI, "arches": [pb.ARCH_X86_64]}
    base.update(fields)
    return pb.NodeSpec(**base)  # type: ignore[arg-type]


BAD_NODES = [
    pytest.param("neg-ratio", {"cpu_allocation_ratio": -1.0}, "cpu_allocation_ratio",
                 id="cpu-ratio-minus-1"),
    pytest.param("nan-ratio", {"cpu_allocation_ratio": math.nan}, "cpu_allocation_ratio",
                 id="cpu-ratio-NaN"),
    pytest.param("inf-ratio", {"memory_allocation_ratio": math.inf}, "memory_allocation_ratio",
                 id="memory-ratio-inf"),
    pytest.param("big-ratio", {"cpu_allocation_ratio": 64.5}, "cpu_allocation_ratio",
                 id="cpu-ratio-64.5"),
    pytest.param("tiny-ratio", {"memory_allocation_ratio": -1e-9}, "memory_allocation_ratio",
                 id="memory-ratio-negative"),
    pytest.param("million-cpus", {"vcpus": 10**6}, "4096", id="a-million-vcpus"),
    pytest.param("no-cpus", {"vcpus": 0}, "vcpus", id="no-vcpus"),
    pytest.param("huge-memory", {"memory_bytes": 64 * TI + 1}, "64Ti", id="memory-over-64Ti"),
    pytest.param("max-memory", {"memory_bytes": (1 << 64) - 1}, "64Ti", id="memory-2^64-1"),
    pytest.param("tiny-memory", {"memory_bytes": 4096}, "1Mi", id="memory-4Ki"),
    pytest.param("no-arch", {"arches": []}, "architecture", id="no-arches"),
    pytest.param("bad-arch", {"arches": [pb.ARCH_UNSPECIFIED]}, "architecture",
                 id="unspecified-arch"),
    pytest.param("esc-label", {"labels": {"zone": "a\x1b[2J"}}, "node label",
                 id="ESC-in-a-label"),
    pytest.param("nl-label", {"labels": {"zone\n": "a"}}, "node label",
                 id="newline-in-a-label-key"),
    pytest.param("many-labels", {"labels": {f"k{i}": "v" for i in range(65)}}, "64",
                 id="65-labels"),
    pytest.param("bad-port", {"address": "10.0.0.1:99999"}, "address", id="port-99999"),
    pytest.param("no-port", {"address": "10.0.0.1"}, "address", id="no-port"),
    pytest.param("space-host", {"address": "bad host:80"}, "address", id="space-in-host"),
    pytest.param("esc-host", {"address": "\x1b[2J:80"}, "address", id="ESC-in-host"),
    pytest.param("no-host", {"address": ":80"}, "address", id="no-host"),
    pytest.param("esc-version", {"agent_version": "0.1\x1b[2J"}, "agent_version",
                 id="ESC-in-the-agent-version"),
    pytest.param("nl-arch", {"host_arch": "x86_64\n"}, "host_arch", id="newline-host-arch"),
]


@pytest.mark.parametrize(("node", "fields", "needle"), BAD_NODES)
def test_a_node_with_an_absurd_declaration_cannot_register(
    api: Api, node: str, fields: dict[str, object], needle: str
) -> None:
    code, msg = code_of(lambda: api.gateway.Register(
        apb.RegisterRequest(node=node, spec=_spec(**fields))))
    assert code == INVALID, msg
    assert needle in msg
    assert_one_clean_line(msg)
    assert node not in node_names(api)


@pytest.mark.parametrize("node", ["Node_1", "node-1\n", "node\0", "x" * 64, "", "-n", "n."])
def test_a_node_name_must_be_a_dns_label(api: Api, node: str) -> None:
    code, msg = code_of(lambda: api.gateway.Register(
        apb.RegisterRequest(node=node, spec=_spec())))
    assert code == INVALID and "DNS label" in msg
    assert_one_clean_line(msg)


@pytest.mark.parametrize("fields", [
    {"cpu_allocation_ratio": 0.0, "memory_allocation_ratio": 0.0},
    {"cpu_allocation_ratio": 64.0, "memory_allocation_ratio": 0.25},
    {"vcpus": 4096, "memory_bytes": 64 * TI},
    {"vcpus": 1, "memory_bytes": 1 << 20},
    {"address": "10.0.0.1:7000"},
    {"address": "[::1]:7000"},
    {"address": "node-1.example.com:7000"},
    {"labels": {"zone": "eu-1", "viridian.io/rack": "r1", "ssd": ""}},
    {"agent_version": "0.1.0", "host_arch": "x86_64"},
], ids=["default-ratios", "ratio-bounds", "largest", "smallest", "ipv4", "ipv6", "dns",
        "labels", "version"])
def test_sane_node_declarations_register(api: Api, fields: dict[str, object]) -> None:
    reply = api.gateway.Register(apb.RegisterRequest(node="sane-node", spec=_spec(**fields)))
    assert reply.session_id


def test_scheduling_goes_on_for_other_nodes_after_a_refused_registration(
    api: Api, elf: bytes
) -> None:
    push(api.stub, "hello", elf)
    for fields in ({"cpu_allocation_ratio": -1.0}, {"vcpus": 10**6},
                   {"memory_allocation_ratio": math.nan}):
        code, _ = code_of(lambda fields=fields: api.gateway.Register(  # type: ignore[misc]
            apb.RegisterRequest(node="sched-bad", spec=_spec(**fields))))
        assert code == INVALID
    agent = FakeAgent(api, "sched-good", vcpus=2, memory=2 * GI)
    try:
        create(api, "sched-after", vcpus=2, memory_bytes=GI,
               node_selector={"viridian.io/node": "sched-good"})
        wait_for(lambda: get(api, "sched-after").status.phase == pb.PARTITION_PHASE_SCHEDULED,
                 what="the partition to be scheduled on the good node")
        assert get(api, "sched-after").status.node == "sched-good"
        good = api.stub.GetNode(cpb.GetNodeRequest(name="sched-good"))
        assert good.status.allocatable_vcpus == 8
        assert "sched-bad" not in node_names(api)
    finally:
        agent.close()


# -- 3. text from agents -------------------------------------------------------------------


def _events_about(api: Api, obj: str) -> list[pb.Event]:
    return list(api.stub.ListEvents(cpb.ListEventsRequest(object=obj)).events)


def test_escape_sequences_forged_in_reports_never_reach_a_terminal(
    api: Api, elf: bytes
) -> None:
    push(api.stub, "hello", elf)
    agent = FakeAgent(api, "forger", vcpus=4, memory=4 * GI)
    try:
        create(api, "victim", node_selector={"viridian.io/node": "forger"})
        wait_for(lambda: agent.assignments("victim"), what="the assignment")
        epoch = agent.assignments("victim")[-1].epoch
        agent.report(apb.PartitionReport(name="victim", epoch=epoch,
                                         phase=pb.PARTITION_PHASE_FAILED, reason=FORGED))
        agent.outgoing.put(apb.AgentMessage(event=apb.AgentEvent(
            partition="victim", type="Warning", reason="Forged\x1b[2J", message=FORGED)))
        wait_for(lambda: get(api, "victim").status.phase == pb.PARTITION_PHASE_FAILED,
                 what="the failure report")
        wait_for(lambda: any(e.reason.startswith("Forged") for e in _events_about(api, "victim")),
                 what="the agent's event")

        reason = get(api, "victim").status.reason
        assert "ok" in reason and "evil" in reason and "later" in reason
        assert_one_clean_line(reason)
        events = _events_about(api, "victim")
        for ev in events:
            assert_one_clean_line(ev.reason)
            assert_one_clean_line(ev.message)
        assert render_list(events, EVENT_COLUMNS, "wide").count("ok") >= 2

        # What an operator's terminal receives from the real CLI.
        runner = CliRunner()
        for args in (["events", "--object", "victim", "-o", "wide"], ["get", "victim"],
                     ["ls", "-o", "wide"]):
            result = runner.invoke(cli, ["--controller", api.address, "--insecure", *args])
            assert result.exit_code == 0, result.output
            assert "evil" in result.output or args[0] == "ls"
            assert not any(c in result.output for c in RAW_CONTROLS), (args, result.output)
    finally:
        agent.close()


def test_a_huge_reason_from_an_agent_is_cut(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    agent = FakeAgent(api, "chatty", vcpus=4, memory=4 * GI)
    try:
        create(api, "chatty-p", node_selector={"viridian.io/node": "chatty"})
        wait_for(lambda: agent.assignments("chatty-p"), what="the assignment")
        epoch = agent.assignments("chatty-p")[-1].epoch
        agent.report(apb.PartitionReport(name="chatty-p", epoch=epoch,
                                         phase=pb.PARTITION_PHASE_FAILED,
                                         reason="why " * 100_000))
        wait_for(lambda: get(api, "chatty-p").status.phase == pb.PARTITION_PHASE_FAILED,
                 what="the failure report")
        assert len(get(api, "chatty-p").status.reason) <= 1024
    finally:
        agent.close()



def test_an_agent_speaks_only_about_its_own_partitions(api: Api) -> None:
    """An event naming a partition the node does not hold is recorded against the node,
    attributed to it: a node cannot put words in another partition's history."""
    agent = FakeAgent(api, "gossip-node", 2, 4 * GI)
    try:
        agent.outgoing.put(apb.AgentMessage(event=apb.AgentEvent(
            partition="someone-elses", reason="Crashed", message="it died", type="Warning")))

        def recorded() -> list[pb.Event]:
            events = api.stub.ListEvents(cpb.ListEventsRequest()).events
            return [e for e in events if e.reason == "Crashed" and "it died" in e.message]

        (event,) = wait_for(recorded, what="the agent's event")
        assert (event.kind, event.object) == ("Node", "gossip-node")
        assert "someone-elses" in event.message and event.source == "node/gossip-node"
    finally:
        agent.close()
