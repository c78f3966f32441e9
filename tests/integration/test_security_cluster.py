"""Security with real processes: an agent joins with a token and runs a guest; a join for a
live node's name is refused; etcd refuses a client without a certificate; the CLI works
against `viridian up` with no flags, and refuses plaintext and foreign tokens in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from itutil import (
    ClusterHandle,
    assert_cli_error,
    running_cluster,
    wait_node,
    wait_phase,
)
from pyetcd.etcdrpc import rpc_pb2, rpc_pb2_grpc
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.security.pki import ETCD_NAME


@pytest.fixture(scope="module")
def secured(guests: dict[str, Path]) -> Iterator[ClusterHandle]:
    yield from running_cluster("vit-sec-", {"hello": guests["hello"]})


def _join_agent(c: ClusterHandle, name: str, token: str) -> subprocess.Popen[bytes]:
    pki = c.data_dir / "joined" / name
    pki.mkdir(parents=True)
    shutil.copy(c.cluster.pki.ca_dir.ca, pki / "ca.pem")  # all a new node is given
    return c.cluster._cli(
        "agent", "--controller", c.cluster.agent_address, "--name", name, "--vcpus", "2",
        "--memory", str(1 << 30), "--run-dir", str(c.data_dir / "agents" / name),
        "--pki-dir", str(pki), "--join", c.address, "--join-token", token,
        log=c.data_dir / "logs" / f"{name}.log")


def test_an_agent_joins_with_a_token_and_runs_a_guest(secured: ClusterHandle) -> None:
    c = secured
    token = c.stub.CreateToken(cpb.CreateTokenRequest(role=pb.ROLE_NODE_JOIN)).secret
    agent = _join_agent(c, "joined-1", token)
    c.cluster.agents["joined-1"] = agent  # stopped (and checked) with the cluster
    wait_node(c.stub, "joined-1", pb.NODE_STATE_READY)
    cert = (c.data_dir / "joined" / "joined-1" / "cert.pem").read_bytes()
    from cryptography import x509

    assert x509.load_pem_x509_certificate(cert).subject.rfc4514_string() == "CN=node:joined-1"
    c.stub.CreatePartition(cpb.CreatePartitionRequest(name="sec-joined", spec=pb.PartitionSpec(
        image="hello", args=["5"], node_selector={"viridian.io/node": "joined-1"},
        desired_state=pb.DESIRED_STATE_RUNNING)))
    done = wait_phase(c.stub, "sec-joined", pb.PARTITION_PHASE_OFF)
    assert done.status.node == "joined-1" and done.status.exit_code == 5

    # The same token for the live node's name: refused, no certificate written.
    again = c.data_dir / "joined" / "again"
    again.mkdir()
    shutil.copy(c.cluster.pki.ca_dir.ca, again / "ca.pem")
    res = subprocess.run(
        [sys.executable, "-m", "controller.cli", "agent", "--controller",
         c.cluster.agent_address, "--name", "joined-1",
         "--run-dir", str(c.data_dir / "agents" / "impostor"), "--pki-dir", str(again),
         "--join", c.address, "--join-token", token],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode != 0 and "is connected" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (again / "cert.pem").exists() and not (again / "key.pem").exists()


def test_etcd_refuses_a_client_without_a_certificate(secured: ClusterHandle) -> None:
    assert secured.cluster.etcd is not None
    endpoint = secured.cluster.etcd.endpoint.removeprefix("https://")
    ca = secured.cluster.pki.ca().cert_pem
    options = [("grpc.ssl_target_name_override", ETCD_NAME)]
    with grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(ca), options=options) as ch:
        with pytest.raises(grpc.RpcError) as info:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/viridian/"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    with grpc.insecure_channel(endpoint) as ch, pytest.raises(grpc.RpcError):
        rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/viridian/"), timeout=5)


def test_the_cli_needs_no_flags_and_refuses_the_wrong_ones(secured: ClusterHandle) -> None:
    c = secured
    assert "node-1" in c.cli("nodes").out  # credentials saved by the cluster's start
    assert_cli_error(c.cli("--token", "abcdef.0123456789abcdef0123456789abcdef", "nodes"),
                     "UNAUTHENTICATED")
    viewer = c.stub.CreateToken(cpb.CreateTokenRequest(role=pb.ROLE_VIEWER)).secret
    assert_cli_error(c.cli("--token", viewer, "node", "cordon", "node-1"), "PERMISSION_DENIED")
    res = c.cli("--insecure", "nodes")  # plaintext against a TLS server
    assert res.code == 1 and "Traceback" not in res.err and "cannot reach" in res.err
