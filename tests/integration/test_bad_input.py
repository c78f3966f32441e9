"""Bad input over gRPC (status code + a message naming the object) and through the CLI."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from itutil import GUESTS, ClusterHandle, assert_cli_error, compile_guest, wait_for, wait_phase
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

GI = 1 << 30


def _code(err: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    assert isinstance(err.value, grpc.Call)
    return err.value.code()


def _details(err: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    assert isinstance(err.value, grpc.Call)
    return err.value.details() or ""


def _create(cluster: ClusterHandle, name: str, **spec: object) -> pb.Partition:
    fields: dict[str, object] = {"image": "hello", "args": ["0"]}
    fields.update(spec)
    return cluster.stub.CreatePartition(
        cpb.CreatePartitionRequest(name=name, spec=pb.PartitionSpec(**fields)),  # type: ignore[arg-type]
        timeout=10)


CREATE_CASES = [
    pytest.param("Bad_Name", {}, "StatusCode.INVALID_ARGUMENT", "Bad_Name", id="not-dns-label"),
    pytest.param("x" * 64, {}, "StatusCode.INVALID_ARGUMENT", "x" * 64, id="64-chars"),
    pytest.param("-dash", {}, "StatusCode.INVALID_ARGUMENT", "-dash", id="leading-dash"),
    pytest.param("it-bad-vcpus", {"vcpus": 5}, "StatusCode.INVALID_ARGUMENT", "vcpus",
                 id="vcpus-5"),
    pytest.param("it-bad-mem", {"memory_bytes": 64 * GI + 4096},
                 "StatusCode.INVALID_ARGUMENT", "memory", id="memory-over-64Gi"),
    pytest.param("it-bad-mem-odd", {"memory_bytes": 64 * GI + 1},
                 "StatusCode.INVALID_ARGUMENT", "memory", id="memory-64Gi+1"),
    pytest.param("it-bad-image", {"image": "no-such-image"}, "StatusCode.NOT_FOUND",
                 "no-such-image", id="unknown-image"),
    pytest.param("it-bad-strategy", {"placement_strategy": "random"},
                 "StatusCode.INVALID_ARGUMENT", "random", id="unknown-strategy"),
]


@pytest.mark.parametrize(("name", "spec", "code", "needle"), CREATE_CASES)
def test_create_rejects_bad_input(cluster: ClusterHandle, name: str, spec: dict[str, object],
                                  code: str, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _create(cluster, name, **spec)
    assert str(_code(err)) == code, _details(err)
    assert needle in _details(err)
    names = [p.name for p in cluster.stub.ListPartitions(
        cpb.ListPartitionsRequest(), timeout=5).partitions]
    assert name not in names


def test_vcpus_zero_defaults_to_one(cluster: ClusterHandle) -> None:
    part = _create(cluster, "it-bad-vcpus0", vcpus=0, memory_bytes=0)
    assert part.spec.vcpus == 1
    assert part.spec.memory_bytes == 64 << 20
    cluster.cli("delete", "--force", "it-bad-vcpus0")


def test_duplicate_name_already_exists(cluster: ClusterHandle) -> None:
    _create(cluster, "it-dup")
    with pytest.raises(grpc.RpcError) as err:
        _create(cluster, "it-dup")
    assert _code(err) == grpc.StatusCode.ALREADY_EXISTS
    assert "it-dup" in _details(err)
    res = cluster.cli("create", "it-dup", "--image", "hello")
    assert_cli_error(res, "ALREADY_EXISTS", "it-dup")


def _push_requests(name: str, data: bytes) -> Iterator[cpb.PushImageRequest]:
    yield cpb.PushImageRequest(header=cpb.ImageHeader(
        name=name, format="elf", size_bytes=len(data),
        digest="sha256:" + hashlib.sha256(data).hexdigest()))
    for i in range(0, len(data), 1 << 20):
        yield cpb.PushImageRequest(chunk=data[i:i + (1 << 20)])


@pytest.fixture(scope="module")
def dynamic_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dyn") / "hello-dyn"
    return compile_guest(GUESTS / "hello.c", out, static=False)


def test_push_non_elf_refused(cluster: ClusterHandle, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        cluster.stub.PushImage(_push_requests("it-notelf", b"#!/bin/sh\necho hi\n" * 10),
                               timeout=10)
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert "ELF" in _details(err) or "elf" in _details(err), _details(err)
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    assert_cli_error(cluster.cli("image", "push", "it-notelf", str(script)))


def test_dynamic_elf_without_its_interpreter_fails_at_start_naming_it(
        cluster: ClusterHandle, dynamic_elf: Path) -> None:
    """A dynamically linked program is a valid image, but pushed alone it has no ld.so in
    its root: the partition fails at start with one line naming the missing interpreter."""
    image = cluster.stub.PushImage(_push_requests("it-dyn", dynamic_elf.read_bytes()),
                                   timeout=10)
    assert image.arch == pb.ARCH_X86_64
    _create(cluster, "it-dyn-run", image="it-dyn")
    part = wait_phase(cluster.stub, "it-dyn-run", pb.PARTITION_PHASE_FAILED)
    reason = part.status.reason
    assert "interpreter" in reason and "not found" in reason and "\n" not in reason, reason
    images = [i.name for i in cluster.stub.ListImages(cpb.ListImagesRequest(), timeout=5).images]
    assert "it-notelf" not in images


def test_push_wrong_digest_refused(cluster: ClusterHandle, guests: dict[str, Path]) -> None:
    data = guests["true"].read_bytes()
    reqs = list(_push_requests("it-digest", data))
    reqs[0].header.digest = "sha256:" + "0" * 64
    with pytest.raises(grpc.RpcError) as err:
        cluster.stub.PushImage(iter(reqs), timeout=10)
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT, _details(err)


def test_cordon_unknown_node_not_found(cluster: ClusterHandle) -> None:
    with pytest.raises(grpc.RpcError) as err:
        cluster.stub.CordonNode(cpb.CordonNodeRequest(name="no-such-node"), timeout=5)
    assert _code(err) == grpc.StatusCode.NOT_FOUND
    assert "no-such-node" in _details(err)
    assert_cli_error(cluster.cli("node", "cordon", "no-such-node"), "NOT_FOUND", "no-such-node")


def test_unknown_partition_not_found(cluster: ClusterHandle) -> None:
    stub, name = cluster.stub, "it-nope"
    calls = [
        lambda: stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=5),
        lambda: stub.StopPartition(cpb.StopPartitionRequest(name=name), timeout=5),
        lambda: stub.StartPartition(cpb.StartPartitionRequest(name=name), timeout=5),
        lambda: stub.DeletePartition(cpb.DeletePartitionRequest(name=name), timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert _code(err) == grpc.StatusCode.NOT_FOUND
        assert name in _details(err)
    for args in (["get", name], ["stop", name], ["logs", name], ["delete", name]):
        assert_cli_error(cluster.cli(*args), name)


def test_too_big_for_any_node_stays_pending(cluster: ClusterHandle) -> None:
    name = "it-toobig"
    part = _create(cluster, name, image="sleep", args=["1"], memory_bytes=60 * GI)

    def pending_with_reason() -> pb.Partition | None:
        got = cluster.stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=5)
        ok = got.status.phase == pb.PARTITION_PHASE_PENDING and "memory" in got.status.reason
        return got if ok else None

    part = wait_for(pending_with_reason, f"{name} Pending with a memory reason")
    assert part.status.node == ""
    events = cluster.stub.ListEvents(cpb.ListEventsRequest(object=name), timeout=5).events
    assert any(e.reason == "FailedScheduling" for e in events), events
    res = cluster.cli("get", name)
    assert res.code == 0 and "Pending" in res.out, str(res)
    assert cluster.cli("delete", name).code == 0


@pytest.mark.parametrize(("args", "needles"), [
    pytest.param(["create", "Bad_Name", "--image", "hello"], ["INVALID_ARGUMENT", "Bad_Name"],
                 id="bad-name"),
    pytest.param(["create", "it-cli-mem", "--image", "hello", "--memory", "65Gi"],
                 ["memory"], id="memory"),
    pytest.param(["create", "it-cli-vcpus", "--image", "hello", "--vcpus", "5"],
                 ["vcpus"], id="vcpus"),
    pytest.param(["run", "--image", "no-such-image"], ["NOT_FOUND", "no-such-image"],
                 id="unknown-image"),
    pytest.param(["node", "uncordon", "no-such-node"], ["no-such-node"], id="unknown-node"),
    pytest.param(["image", "rm", "no-such-image"], ["no-such-image"], id="image-rm-unknown"),
])
def test_cli_errors_are_one_line(cluster: ClusterHandle, args: list[str],
                                 needles: list[str]) -> None:
    assert_cli_error(cluster.cli(*args), *needles)
