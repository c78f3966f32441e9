"""Hyper-V's lifecycle through the real cluster: pause/resume, save → move → start on the
other node (state transferred by the cluster), checkpoints, and live migration refused."""

from __future__ import annotations

import re
import time

import pytest
from itutil import ClusterHandle, assert_cli_error, wait_for, wait_phase
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb


def _get(cluster: ClusterHandle, name: str) -> pb.Partition:
    return cluster.stub.GetPartition(cpb.GetPartitionRequest(name=name), timeout=5)


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"^(\d+)$", text, re.M)]


def _ok(cluster: ClusterHandle, *args: str) -> str:
    res = cluster.cli(*args)
    assert res.code == 0, str(res)
    return res.out


def test_pause_save_move_restore_checkpoint(cluster: ClusterHandle) -> None:
    name = "it-hv"
    _ok(cluster, "create", name, "--image", "counter", "--node-selector",
        "viridian.io/node=node-1", "--", "100000")
    wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING)
    wait_for(lambda: len(_numbers(cluster.cli("logs", name).out)) > 5, "counter output")

    _ok(cluster, "pause", name, "--wait", "--timeout", "20s")
    frozen = _numbers(cluster.cli("logs", name).out)
    time.sleep(0.3)  # a paused guest must not advance; give it the chance to
    assert _numbers(cluster.cli("logs", name).out) == frozen
    _ok(cluster, "resume", name, "--wait", "--timeout", "20s")
    wait_for(lambda: max(_numbers(cluster.cli("logs", name).out)) > max(frozen),
             "counting again after resume")

    # Moving a running partition is refused, with the recipe.
    res = cluster.cli("move", name, "--to", "node-2")
    assert_cli_error(res, "FAILED_PRECONDITION", "live migration is not supported",
                     f"viridian save {name}")

    _ok(cluster, "checkpoint", "create", name, "cp1", "--wait", "--timeout", "30s")
    cp = next(c for c in _get(cluster, name).status.checkpoints if c.name == "cp1")
    assert cp.state.digest.startswith("sha256:") and cp.state.node == "node-1"

    _ok(cluster, "save", name, "--wait", "--timeout", "30s")
    saved = _get(cluster, name)
    assert saved.status.saved_state.node == "node-1" and saved.status.node
    before = _numbers(cluster.cli("logs", name).out)
    last_before = max(before)

    _ok(cluster, "move", name, "--to", "node-2")
    _ok(cluster, "start", name, "--wait", "--timeout", "30s")
    moved = _get(cluster, name)
    assert moved.status.node == "node-2", moved.status
    # Restored, not rebooted: the counter goes on from where it was saved. The console
    # came along in the state: `logs` on node-2 shows the output from before the save too.
    out = wait_for(lambda: (n := _numbers(cluster.cli("logs", name).out)) and
                   max(n) > last_before + 5 and n, "output on node-2 after the restore")
    assert out[:len(before)] == before
    first_after = out[len(before)]
    assert last_before < first_after <= last_before + 50, (last_before, first_after)
    tail = _ok(cluster, "logs", name, "--tail", "2").splitlines()
    assert len(tail) == 2 and int(tail[1]) == int(tail[0]) + 1 > last_before, tail
    stamped = _ok(cluster, "logs", name, "--tail", "1", "--timestamps").splitlines()
    (when, number) = stamped[0].split()
    assert when.startswith(time.strftime("%Y-%m-%dT", time.gmtime())) and int(number) > 0

    _ok(cluster, "checkpoint", "apply", name, "cp1", "--wait", "--timeout", "30s")
    assert _get(cluster, name).status.phase == pb.PARTITION_PHASE_RUNNING
    reasons = {e.reason for e in cluster.stub.ListEvents(
        cpb.ListEventsRequest(object=name)).events}
    assert {"Paused", "Resumed", "CheckpointCreated", "Saved", "Moved", "Restored",
            "CheckpointApplied"} <= reasons, reasons
    _ok(cluster, "delete", name, "--force", "--wait", "--timeout", "20s")


@pytest.mark.parametrize("image", ["checksum", "checksum32"])
def test_saved_midway_and_restored_elsewhere_gives_the_same_result(
    cluster: ClusterHandle, image: str
) -> None:
    """Saved while its threads compute, restored on the other node: the same checksum as an
    uninterrupted run. The guest is gated (it prints its result only after a byte on stdin),
    so however fast it computes, the save can never find it already Off: the test used to
    race the guest and lost on a fast machine."""
    ref, name = f"it-{image}-ref", f"it-{image}-mv"
    args = ["200", "200000", "gate"]
    for part, selector in ((ref, {}), (name, {"viridian.io/node": "node-1"})):
        cluster.stub.CreatePartition(cpb.CreatePartitionRequest(name=part, spec=pb.PartitionSpec(
            image=image, vcpus=4, args=args, stdin=True, node_selector=selector,
            desired_state=pb.DESIRED_STATE_RUNNING)), timeout=10)
    wait_for(lambda: "progress" in cluster.cli("logs", name).out, "progress before the save")
    _ok(cluster, "save", name, "--wait", "--timeout", "60s")
    assert "final=" not in cluster.cli("logs", name).out
    _ok(cluster, "move", name, "--to", "node-2")
    _ok(cluster, "start", name, "--wait", "--timeout", "60s")
    assert _get(cluster, name).status.node == "node-2"
    # Open the gates (the byte waits in the guest's stdin until it reads it; the moved
    # one may have printed "computed" on node-1 already, before the save).
    for part in (ref, name):
        cluster.stub.SendStdin(iter([cpb.StdinChunk(name=part, data=b"go", close=True)]),
                               timeout=10)
    for part in (ref, name):
        # Generous: the rest of the computation runs only now, 4 vCPUs on a loaded 2-core
        # host; the logs tell a slow guest from a gate that never opened.
        try:
            wait_phase(cluster.stub, part, pb.PARTITION_PHASE_OFF, timeout=180)
        except AssertionError as err:
            raise AssertionError(f"{err}\nlogs of {part}:\n"
                                 f"{cluster.cli('logs', part).out[-2000:]}") from None

    def final(part: str) -> str:
        found = re.findall(r"final=\S+", cluster.cli("logs", part).out)
        assert found, cluster.cli("logs", part).out[-500:]
        return found[-1]

    assert final(name) == final(ref)
    assert _get(cluster, name).status.exit_code == 0
    for part in (ref, name):
        _ok(cluster, "delete", part)
