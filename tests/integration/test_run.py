"""`viridian run` end to end: output, exit codes, logs, i386 guests, multi-vCPU guests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from itutil import ClusterHandle, wait_for, wait_phase
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb


def test_run_hello_prints_args_env_and_exits_with_guest_code(cluster: ClusterHandle) -> None:
    res = cluster.cli("run", "it-hello", "--image", "hello", "--env", "GREETING=hi",
                      "--", "7", "a", "b c")
    assert res.code == 7, str(res)
    # The console interleaves the guest's stdout and stderr (LogChunk has no stream field),
    # and `run` copies it to stdout: the stderr line is there, the stdout lines in order.
    lines = res.out.splitlines()
    assert "to-stderr" in lines, str(res)
    assert [ln for ln in lines if ln != "to-stderr"] == [
        "argc=4 exe=/bin/hello", "arg1=7", "arg2=a", "arg3=b c", "GREETING=hi",
    ], str(res)

    part = cluster.stub.GetPartition(cpb.GetPartitionRequest(name="it-hello"), timeout=5)
    assert part.status.phase == pb.PARTITION_PHASE_OFF
    assert part.status.has_exit_code and part.status.exit_code == 7
    assert part.status.arch == pb.ARCH_X86_64

    logs = cluster.cli("logs", "it-hello")
    assert logs.code == 0, str(logs)
    assert "to-stderr" in logs.out.splitlines() and "arg3=b c" in logs.out.splitlines()


def test_run_exit_code_zero_and_large(cluster: ClusterHandle) -> None:
    assert cluster.cli("run", "--image", "hello", "--", "0").code == 0
    assert cluster.cli("run", "--image", "hello", "--", "255").code == 255


def test_run_32bit_guest(cluster: ClusterHandle) -> None:
    res = cluster.cli("run", "it-hello32", "--image", "hello32", "--", "3", "x")
    assert res.code == 3, str(res)
    assert [ln for ln in res.out.splitlines() if ln != "to-stderr"] == [
        "argc=3 exe=/bin/hello32", "arg1=3", "arg2=x", "GREETING=(unset)",
    ], str(res)
    got = json.loads(cluster.cli("get", "it-hello32", "-o", "json").out)
    assert got["status"]["arch"] == "ARCH_I386"
    images = {i["name"]: i for i in json.loads(cluster.cli("image", "ls", "-o", "json").out)}
    assert images["hello32"]["arch"] == "ARCH_I386"


def test_threads_guest_same_checksum_on_1_and_4_vcpus(
        cluster: ClusterHandle, guests: dict[str, Path]) -> None:
    iterations = "300000"
    native = subprocess.run([str(guests["threads"]), iterations], capture_output=True,
                            text=True, timeout=60, check=True).stdout.strip()
    assert native.startswith("checksum=")
    four = cluster.cli("run", "it-threads-4", "--image", "threads", "--vcpus", "4",
                       "--", iterations, timeout=120)
    one = cluster.cli("run", "it-threads-1", "--image", "threads", "--vcpus", "1",
                      "--", iterations, timeout=120)
    assert four.code == 0 and one.code == 0, f"{four}\n{one}"
    assert four.out.strip() == native, str(four)
    assert one.out.strip() == native, str(one)
    part = cluster.stub.GetPartition(cpb.GetPartitionRequest(name="it-threads-4"), timeout=5)
    assert part.spec.vcpus == 4


def test_run_rm_deletes_partition(cluster: ClusterHandle) -> None:
    res = cluster.cli("run", "it-hello-rm", "--rm", "--image", "hello", "--", "5")
    assert res.code == 5, str(res)

    def gone() -> bool:
        names = [p.name for p in cluster.stub.ListPartitions(
            cpb.ListPartitionsRequest(), timeout=5).partitions]
        return "it-hello-rm" not in names

    wait_for(gone, "it-hello-rm deleted after --rm")


def test_create_then_wait_for_exit(cluster: ClusterHandle) -> None:
    res = cluster.cli("create", "it-created", "--image", "hello", "--", "9")
    assert res.code == 0, str(res)
    part = wait_phase(cluster.stub, "it-created", pb.PARTITION_PHASE_OFF)
    assert part.status.exit_code == 9
    assert part.status.started_at.seconds > 0 and part.status.finished_at.seconds > 0
