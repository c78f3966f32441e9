"""The public API of one in-process controller replica on a real etcd, over real gRPC.

Agents are played by the test itself through the AgentGateway service (register + a session
stream), so placement can be observed without running guests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from inproc import Api, FakeAgent, code_of, compile_hello, create, push, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb


@pytest.fixture(scope="module")
def api(etcd_endpoint: str) -> Iterator[Api]:
    yield from replica(etcd_endpoint)


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


def test_health_and_reflection_are_served(api: Api) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(api.address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reqs = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        names = {s.name for r in stub.ServerReflectionInfo(reqs)
                 for s in r.list_services_response.service}
        assert "viridian.v1.Controller" in names
        assert "viridian.v1.AgentGateway" not in names  # agents have a port of their own
    with grpc.insecure_channel(api.replica.agent_address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reqs = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        names = {s.name for r in stub.ServerReflectionInfo(reqs)
                 for s in r.list_services_response.service}
        assert "viridian.v1.AgentGateway" in names


def test_image_push_validates_content(api: Api, elf: bytes) -> None:
    image = push(api.stub, "hello", elf)
    assert image.arch == pb.ARCH_X86_64 and image.entrypoint == "/bin/hello"
    assert image.digest.startswith("sha256:") and image.size_bytes == len(elf)
    code, msg = code_of(lambda: push(api.stub, "junk", b"#!/bin/sh\necho hi\n"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not an x86 ELF executable" in msg
    dynamic = push(api.stub, "dyn", Path("/bin/ls").read_bytes())   # its ld.so: at start
    assert dynamic.arch == pb.ARCH_X86_64
    code, msg = code_of(lambda: push(api.stub, "Bad_Name", elf))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DNS label" in msg
    names = [i.name for i in api.stub.ListImages(cpb.ListImagesRequest()).images]
    assert names == ["dyn", "hello"]


def _tar(*members: tuple[str, bytes | str]) -> bytes:
    """A tar of (name, content) files and (name, "->target") symlinks."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if isinstance(body, str):
                info.type, info.linkname = tarfile.SYMTYPE, body.removeprefix("->")
                tar.addfile(info)
            else:
                info.size, info.mode = len(body), 0o755
                tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_tar_image_push_uses_the_nodes_rules(api: Api, elf: bytes) -> None:
    """The push check is the node's unpacker run dry: a duplicate entry (the node would
    unpack one copy, an older check read the other) is refused at push in one line, and an
    entrypoint reached through an absolute symlink is accepted."""
    def push_tar(name: str, content: bytes) -> pb.Image:
        return api.stub.PushImage(iter([
            cpb.PushImageRequest(header=cpb.ImageHeader(name=name, format="tar",
                                                        entrypoint="/bin/app")),
            cpb.PushImageRequest(chunk=content)]))

    dup = _tar(("bin/app", elf), ("bin/app", b"#!/bin/sh\n"))
    code, msg = code_of(lambda: push_tar("dup", dup))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate entry for 'bin/app'" in msg and "\n" not in msg
    image = push_tar("linked", _tar(("usr/bin/app", elf), ("bin", "->/usr/bin")))
    assert image.entrypoint == "/bin/app" and image.arch == pb.ARCH_X86_64


@pytest.mark.parametrize(
    ("name", "spec", "code", "needle"),
    [
        ("UPPER", {}, grpc.StatusCode.INVALID_ARGUMENT, "DNS label"),
        ("x" * 64, {}, grpc.StatusCode.INVALID_ARGUMENT, "at most 63"),
        ("ok-vcpus", {"vcpus": 5}, grpc.StatusCode.INVALID_ARGUMENT, "between 1 and 4"),
        ("ok-mem", {"memory_bytes": (64 << 30) + 4096}, grpc.StatusCode.INVALID_ARGUMENT,
         "64Gi"),
        ("ok-small", {"memory_bytes": 4096}, grpc.StatusCode.INVALID_ARGUMENT, "1Mi"),
        ("ok-img", {"image": "missing"}, grpc.StatusCode.NOT_FOUND, "image 'missing'"),
        ("ok-mpn", {"max_per_node": 2}, grpc.StatusCode.INVALID_ARGUMENT, "anti_affinity"),
    ],
    ids=["upper-case", "too-long", "vcpus", "memory-max", "memory-min", "image", "max-per-node"],
)
def test_bad_partitions_are_refused_with_a_code(
    api: Api, elf: bytes, name: str, spec: dict[str, object], code: grpc.StatusCode, needle: str
) -> None:
    push(api.stub, "hello", elf)
    got, msg = code_of(lambda: create(api, name, **spec))
    assert got == code and needle in msg
    listed = [p.name for p in api.stub.ListPartitions(cpb.ListPartitionsRequest()).partitions]
    assert name not in listed


def test_duplicate_and_unknown_names(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    create(api, "dup", desired_state=pb.DESIRED_STATE_OFF)
    code, msg = code_of(lambda: create(api, "dup"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'dup'" in msg
    code, msg = code_of(lambda: api.stub.GetPartition(cpb.GetPartitionRequest(name="ghost")))
    assert code == grpc.StatusCode.NOT_FOUND and "'ghost'" in msg
    code, msg = code_of(lambda: api.stub.CordonNode(cpb.CordonNodeRequest(name="no-node")))
    assert code == grpc.StatusCode.NOT_FOUND and "'no-node'" in msg
    code, msg = code_of(lambda: api.stub.DeleteImage(cpb.DeleteImageRequest(name="hello")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "dup" in msg


def test_placement_pending_reason_and_assignment(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    agent = FakeAgent(api, "small-node", vcpus=2, memory=1 << 30)
    try:
        wait_for(lambda: any(
            n.name == "small-node" and n.status.state == pb.NODE_STATE_READY
            for n in api.stub.ListNodes(cpb.ListNodesRequest()).nodes))
        create(api, "too-big", memory_bytes=8 << 30)
        create(api, "fits", memory_bytes=256 << 20, vcpus=2)

        def phase(name: str) -> pb.Partition:
            return api.stub.GetPartition(cpb.GetPartitionRequest(name=name))

        wait_for(lambda: phase("fits").status.phase == pb.PARTITION_PHASE_SCHEDULED)
        wait_for(lambda: "memory" in phase("too-big").status.reason)
        big = phase("too-big")
        assert big.status.phase == pb.PARTITION_PHASE_PENDING
        fits = phase("fits")
        assert fits.status.node == "small-node" and fits.status.epoch > 0
        wait_for(lambda: any(m.HasField("assign") and m.assign.name == "fits"
                             for m in agent.received))
        assign = next(m.assign for m in agent.received if m.HasField("assign"))
        assert assign.epoch == fits.status.epoch and assign.image.name == "hello"
        node = api.stub.GetNode(cpb.GetNodeRequest(name="small-node"))
        assert (node.status.allocated_vcpus, node.status.allocated_memory_bytes) == (2, 256 << 20)

        explained = api.stub.ExplainPlacement(cpb.ExplainPlacementRequest(name="too-big"))
        assert explained.chosen_node == ""
        verdict = next(v for v in explained.verdicts if v.node == "small-node")
        memory = next(f for f in verdict.filters if f.name == "memory")
        assert not memory.passed and "8Gi" in memory.detail
        dry = api.stub.ExplainPlacement(cpb.ExplainPlacementRequest(
            dry_run=pb.PartitionSpec(image="hello", vcpus=1, memory_bytes=128 << 20)))
        assert dry.chosen_node == "small-node"

        # A running-phase partition cannot be deleted without force.
        code, msg = code_of(lambda: api.stub.DeletePartition(
            cpb.DeletePartitionRequest(name="fits")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "Scheduled" in msg
        api.stub.DeletePartition(cpb.DeletePartitionRequest(name="fits", force=True))
        wait_for(lambda: any(m.HasField("command") and m.command.name == "fits"
                             for m in agent.received))
        # Capacity freed: deleting released the allocation.
        node = api.stub.GetNode(cpb.GetNodeRequest(name="small-node"))
        assert node.status.allocated_vcpus == 0
    finally:
        agent.close()


def test_capacity_plan_finds_ha_partitions_without_a_spare(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    big = FakeAgent(api, "plan-big", vcpus=4, memory=32 << 30)
    small = FakeAgent(api, "plan-small", vcpus=4, memory=2 << 30)
    try:
        create(api, "ha-large", memory_bytes=3 << 30, ha=True)
        create(api, "ha-small", memory_bytes=1 << 30, ha=True,
               node_selector={})

        def node_of(name: str) -> str:
            return api.stub.GetPartition(cpb.GetPartitionRequest(name=name)).status.node

        wait_for(lambda: node_of("ha-large") == "plan-big" and node_of("ha-small") != "")
        plan = api.stub.PlanCapacity(cpb.PlanCapacityRequest())
        assert plan.lost_node == "plan-big"
        if node_of("ha-small") == "plan-big":
            assert dict(plan.moves) == {"ha-small": "plan-small"}
        assert list(plan.unplaced) == ["ha-large"] and not plan.ok
        assert "ha-large" in plan.summary
    finally:
        big.close()
        small.close()


def test_lifecycle_pause_save_move_restore_over_the_session(api: Api, elf: bytes) -> None:
    """The controller side of Hyper-V's lifecycle, with the test playing the agent."""
    push(api.stub, "hello", elf)
    agent = FakeAgent(api, "life-a", vcpus=4, memory=4 << 30)
    other = FakeAgent(api, "life-b", vcpus=4, memory=4 << 30)
    kind = apb.PartitionCommand

    def get(name: str) -> pb.Partition:
        return api.stub.GetPartition(cpb.GetPartitionRequest(name=name))

    def report(name: str, phase: int, **extra: object) -> None:
        p = get(name)
        msg = apb.PartitionReport(name=name, epoch=p.status.epoch, phase=phase,  # type: ignore[arg-type]
                                  **extra)  # type: ignore[arg-type]
        sender = agent if p.status.node == "life-a" else other
        sender.report(msg)

    def commands(to: FakeAgent, name: str) -> list[int]:
        return [m.command.kind for m in to.received
                if m.HasField("command") and m.command.name == name]

    try:
        create(api, "vm", node="life-a")
        wait_for(lambda: get("vm").status.phase == pb.PARTITION_PHASE_SCHEDULED)
        report("vm", pb.PARTITION_PHASE_RUNNING)
        wait_for(lambda: get("vm").status.phase == pb.PARTITION_PHASE_RUNNING)

        # Resuming what already runs is a no-op, not an error (the request is satisfied).
        resumed = api.stub.ResumePartition(cpb.PartitionRef(name="vm"))
        assert resumed.status.phase == pb.PARTITION_PHASE_RUNNING
        code, msg = code_of(lambda: api.stub.MovePartition(
            cpb.MovePartitionRequest(name="vm", to_node="life-b")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "live migration is not supported" in msg
        assert "viridian save vm && viridian move vm --to life-b && viridian start vm" in msg

        api.stub.PausePartition(cpb.PartitionRef(name="vm"))
        wait_for(lambda: kind.KIND_PAUSE in commands(agent, "vm"))
        report("vm", pb.PARTITION_PHASE_PAUSED)
        wait_for(lambda: get("vm").status.phase == pb.PARTITION_PHASE_PAUSED)

        api.stub.SavePartition(cpb.PartitionRef(name="vm"))
        assert get("vm").status.phase == pb.PARTITION_PHASE_SAVING
        wait_for(lambda: kind.KIND_SAVE in commands(agent, "vm"))
        state = pb.StateRef(node="life-a", digest="sha256:" + "ab" * 32, size_bytes=5 << 20)
        report("vm", pb.PARTITION_PHASE_SAVED, state=state)
        wait_for(lambda: get("vm").status.phase == pb.PARTITION_PHASE_SAVED)
        saved = get("vm")
        assert saved.status.saved_state == state and saved.status.epoch == 0
        node = api.stub.GetNode(cpb.GetNodeRequest(name="life-a"))
        assert node.status.allocated_vcpus == 0  # a Saved partition holds no node

        moved = api.stub.MovePartition(cpb.MovePartitionRequest(name="vm", to_node="life-b"))
        assert moved.status.target_node == "life-b" and not moved.spec.node
        api.stub.StartPartition(cpb.StartPartitionRequest(name="vm"))
        wait_for(lambda: any(m.HasField("assign") and m.assign.name == "vm"
                             for m in other.received))
        assign = next(m.assign for m in other.received if m.HasField("assign"))
        assert assign.restore == state  # restored from the state, on the new node
        report("vm", pb.PARTITION_PHASE_RUNNING)
        wait_for(lambda: get("vm").status.phase == pb.PARTITION_PHASE_RUNNING)
        assert not get("vm").status.saved_state.digest  # consumed by the restore
        events = api.stub.ListEvents(cpb.ListEventsRequest(object="vm")).events
        reasons = [e.reason for e in events]
        for expected in ("Paused", "Saved", "Moved", "Restored"):
            assert expected in reasons
    finally:
        agent.close()
        other.close()


def test_checkpoints_are_bounded_and_named(api: Api, elf: bytes) -> None:
    push(api.stub, "hello", elf)
    create(api, "cps", desired_state=pb.DESIRED_STATE_OFF)
    for i in range(50):
        api.stub.CreateCheckpoint(cpb.CheckpointRequest(name="cps", checkpoint=f"c{i}"))
    code, msg = code_of(lambda: api.stub.CreateCheckpoint(
        cpb.CheckpointRequest(name="cps", checkpoint="one-more")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "50" in msg
    code, msg = code_of(lambda: api.stub.CreateCheckpoint(
        cpb.CheckpointRequest(name="cps", checkpoint="c3")))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    api.stub.DeleteCheckpoint(cpb.CheckpointRequest(name="cps", checkpoint="c3"))
    code, _ = code_of(lambda: api.stub.ApplyCheckpoint(
        cpb.CheckpointRequest(name="cps", checkpoint="c3")))
    assert code == grpc.StatusCode.NOT_FOUND
    p = api.stub.ApplyCheckpoint(cpb.CheckpointRequest(name="cps", checkpoint="c4"))
    assert p.status.phase == pb.PARTITION_PHASE_OFF
    assert len(p.status.checkpoints) == 49
    code, msg = code_of(lambda: api.stub.PausePartition(cpb.PartitionRef(name="cps")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "Off" in msg
    code, msg = code_of(lambda: api.stub.ResumePartition(cpb.PartitionRef(name="cps")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "is Off" in msg
    code, msg = code_of(lambda: api.stub.SavePartition(cpb.PartitionRef(name="cps")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "is Off" in msg


def test_tar_image_whose_entrypoint_is_a_script_takes_its_interpreters_arch(
        api: Api, elf: bytes) -> None:
    """A #! entrypoint runs through its interpreter: the image's architecture is the
    interpreter's; a script naming a missing interpreter, or none, is refused at push."""
    def push_script(name: str, content: bytes) -> pb.Image:
        return api.stub.PushImage(iter([
            cpb.PushImageRequest(header=cpb.ImageHeader(name=name, format="tar",
                                                        entrypoint="/run.sh")),
            cpb.PushImageRequest(chunk=content)]))

    image = push_script("script", _tar(("bin/sh", elf), ("run.sh", b"#!/bin/sh -e\necho hi\n")))
    assert image.arch == pb.ARCH_X86_64 and image.entrypoint == "/run.sh"
    code, msg = code_of(lambda: push_script("missing", _tar(("run.sh", b"#!/bin/nowhere\n"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "/bin/nowhere" in msg
    code, msg = code_of(lambda: push_script("bare", _tar(("run.sh", b"#!\n"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "interpreter" in msg
