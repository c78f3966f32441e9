"""Saved states on the move through a real cluster: Quick Migration fetches the state
straight from the source node (the controller only signs a ticket), falls back to a
flow-controlled relay through the controller when the source cannot be reached (keeping the
controller's memory flat), refuses a corrupted state, and the source refuses forged tickets.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from itutil import (
    GUESTS,
    NODE_MEMORY,
    NODE_VCPUS,
    ClusterHandle,
    compile_guest,
    running_cluster,
    wait_for,
    wait_node,
    wait_phase,
)
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.etcd_server import free_port
from controller.security.names import node_server_name

MIB = 1 << 20
RSS_LIMIT = 64 * MIB   # the bound on a controller's growth during a 1 GiB move


@pytest.fixture(scope="module")
def srmem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("srmem")
    return compile_guest(GUESTS / "sr_mem.c", out / "srmem")


@pytest.fixture(scope="module")
def cl(srmem: Path) -> Iterator[ClusterHandle]:
    """A cluster of our own: these tests restart agents with other addresses."""
    yield from running_cluster("vit-state-", {"srmem": srmem})


def _events(cl: ClusterHandle, name: str) -> list[pb.Event]:
    return list(cl.stub.ListEvents(cpb.ListEventsRequest(object=name), timeout=10).events)


def _saved_on_node1(cl: ClusterHandle, name: str, touched_mib: int) -> pb.Partition:
    cl.stub.CreatePartition(cpb.CreatePartitionRequest(name=name, spec=pb.PartitionSpec(
        image="srmem", args=[str(touched_mib)], memory_bytes=(touched_mib + 256) * MIB,
        node_selector={"viridian.io/node": "node-1"},
        desired_state=pb.DESIRED_STATE_RUNNING)), timeout=10)
    wait_phase(cl.stub, name, pb.PARTITION_PHASE_RUNNING, timeout=60)
    wait_for(lambda: "ready" in cl.cli("logs", name).out, f"{name} to touch its memory",
             timeout=120)
    cl.stub.SavePartition(cpb.PartitionRef(name=name), timeout=10)
    return wait_phase(cl.stub, name, pb.PARTITION_PHASE_SAVED, timeout=120)


def _move_and_start(cl: ClusterHandle, name: str) -> None:
    cl.stub.MovePartition(cpb.MovePartitionRequest(name=name, to_node="node-2"), timeout=10)
    cl.stub.StartPartition(cpb.StartPartitionRequest(name=name), timeout=10)


def _running_on_node2(cl: ClusterHandle, name: str) -> None:
    part = wait_phase(cl.stub, name, pb.PARTITION_PHASE_RUNNING, pb.PARTITION_PHASE_FAILED,
                      timeout=180)
    assert part.status.phase == pb.PARTITION_PHASE_RUNNING, part.status
    assert part.status.node == "node-2", part.status
    # Restored, not rebooted.
    wait_for(lambda: any(e.reason == "Restored" for e in _events(cl, name)),
             f"{name} restored on node-2")


def _fetched(cl: ClusterHandle, name: str) -> str:
    found = [e.message for e in _events(cl, name) if e.reason == "StateFetched"]
    assert found, [(e.reason, e.message) for e in _events(cl, name)]
    return found[-1]


def _address(cl: ClusterHandle, node: str) -> str:
    return cl.stub.GetNode(cpb.GetNodeRequest(name=node), timeout=5).spec.address


def _restart_agent(cl: ClusterHandle, node: str, address: str = "") -> None:
    """Agent `node` again, announcing `address` for state transfers ("": its own)."""
    old = _address(cl, node)
    proc = cl.cluster.agents[node]
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    extra = ["--address", address] if address else []
    cl.cluster.agents[node] = cl.cluster._cli(
        *cl.cluster.agent_args(node, NODE_VCPUS, NODE_MEMORY), *extra,
        log=cl.data_dir / "logs" / f"{node}.log")
    wait_for(lambda: _address(cl, node) == address if address else _address(cl, node) != old,
             f"{node} registered again")
    wait_node(cl.stub, node, pb.NODE_STATE_READY)


class RssWatch:
    """The controller's resident memory: VmRSS before, then the peak (VmHWM, reset first
    through clear_refs so only this window counts) and a sampled maximum."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self._read("VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.sampled = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _read(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for pid {self.pid}")

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.sampled = max(self.sampled, self._read("VmRSS"))

    def stop(self) -> tuple[int, int]:
        """(growth of the peak over `before`, after - before)."""
        self._stop.set()
        self._thread.join(5)
        peak = max(self._read("VmHWM"), self.sampled)
        return peak - self.before, self._read("VmRSS") - self.before


def test_quick_migration_fetches_the_state_directly(cl: ClusterHandle) -> None:
    name = "st-direct"
    saved = _saved_on_node1(cl, name, 256)
    assert saved.status.saved_state.size_bytes > 256 * MIB
    assert _address(cl, "node-1")
    _move_and_start(cl, name)
    _running_on_node2(cl, name)
    assert "fetched from node-1 directly" in _fetched(cl, name)
    # The controller never carried the bytes: it signed a ticket, nothing more.
    assert not [e for e in _events(cl, name) if e.reason == "StateRelayed"]
    cl.stub.DeletePartition(cpb.DeletePartitionRequest(name=name, force=True), timeout=10)


def test_corrupted_state_is_refused(cl: ClusterHandle) -> None:
    name = "st-corrupt"
    saved = _saved_on_node1(cl, name, 16)
    digest = saved.status.saved_state.digest
    path = (cl.data_dir / "agents" / "node-1" / "states" / name /
            f"{digest.removeprefix('sha256:')}.state")
    with open(path, "r+b") as f:  # same size, one byte changed in the middle
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    _move_and_start(cl, name)
    part = wait_phase(cl.stub, name, pb.PARTITION_PHASE_FAILED, timeout=60)
    assert "digest" in part.status.reason and digest in part.status.reason, part.status
    assert not (cl.data_dir / "agents" / "node-2" / "states" / name /
                path.name).exists()
    cl.stub.DeletePartition(cpb.DeletePartitionRequest(name=name, force=True), timeout=10)


def _node_channel(cl: ClusterHandle, as_node: str, address: str, source: str) -> grpc.Channel:
    pki = cl.cluster.pki.node(as_node)
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.key.read_bytes(),
                                         pki.cert.read_bytes())
    return grpc.secure_channel(address, creds, options=[
        ("grpc.ssl_target_name_override", node_server_name(source))])


def test_source_refuses_forged_tickets(cl: ClusterHandle) -> None:
    address = _address(cl, "node-1")
    claims = apb.StateTicketClaims(name="st-direct", digest="sha256:" + "0" * 64,
                                   source="node-1", destination="node-2",
                                   expires_unix_ms=2 ** 62)
    forged = [
        apb.StateTicket(claims=claims.SerializeToString(), mac=b"\0" * 32).SerializeToString(),
        b"not a ticket at all",
        b"",
    ]
    with _node_channel(cl, "node-2", address, "node-1") as channel:
        stub = agent_pb2_grpc.StateSourceStub(channel)
        for ticket in forged:
            with pytest.raises(grpc.RpcError) as err:
                list(stub.FetchState(apb.FetchStateRequest(ticket=ticket), timeout=10))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
            assert "state ticket refused" in (err.value.details() or "")


def test_a_transfer_broken_half_way_resumes_where_it_stopped(cl: ClusterHandle) -> None:
    """The source's agent is killed while node-2 fetches a 1 GiB state and started again:
    the fetch goes on from the byte it reached (through the controller while the source's
    own port is down), and the partition restores."""
    name = "st-resume"
    saved = _saved_on_node1(cl, name, 1024)
    size = saved.status.saved_state.size_bytes
    partial = cl.data_dir / "agents" / "node-2" / "states" / name / ".pull.partial"

    def arriving() -> bool:
        try:
            return 0 < partial.stat().st_size < size // 2
        except OSError:
            return False

    _move_and_start(cl, name)
    wait_for(arriving, "the state arriving on node-2", timeout=60, interval=0.002)
    cl.kill_agent("node-1")
    broke_at = partial.stat().st_size
    cl.restart_agent("node-1")
    _running_on_node2(cl, name)
    message = _fetched(cl, name)
    assert "fetched from node-1" in message and "resumed" in message, message
    # Resumed, not started over: the relay (or direct resume) began past the break.
    relayed = [e.message for e in _events(cl, name) if e.reason == "StateRelayed"]
    offsets = [int(m.split("from offset ")[1].split()[0]) for m in relayed]
    assert all(o >= broke_at for o in offsets), (broke_at, relayed)
    cl.stub.DeletePartition(cpb.DeletePartitionRequest(name=name, force=True), timeout=10)
    wait_node(cl.stub, "node-1", pb.NODE_STATE_READY)


def test_relay_through_the_controller_keeps_its_memory_flat(cl: ClusterHandle) -> None:
    """node-1 announces an address nobody listens on: node-2 cannot reach it and goes
    through the controller, which relays 1 GiB with its memory flat."""
    closed = f"127.0.0.1:{free_port()}"
    _restart_agent(cl, "node-1", closed)
    try:
        name = "st-relay"
        _saved_on_node1(cl, name, 1024)
        assert cl.cluster.controller is not None
        watch = RssWatch(cl.cluster.controller.pid)
        _move_and_start(cl, name)
        try:
            _running_on_node2(cl, name)
        finally:
            peak, after = watch.stop()
        assert "fetched from node-1 through the controller" in _fetched(cl, name)
        relayed = [e.message for e in _events(cl, name) if e.reason == "StateRelayed"]
        assert relayed and "relayed from node-1 to node-2" in relayed[-1], relayed
        assert peak <= RSS_LIMIT, f"controller RSS grew by {peak / MIB:.1f} MiB at its peak"
        assert after <= RSS_LIMIT, f"controller RSS grew by {after / MIB:.1f} MiB"
        cl.stub.DeletePartition(cpb.DeletePartitionRequest(name=name, force=True), timeout=10)
    finally:
        _restart_agent(cl, "node-1")
