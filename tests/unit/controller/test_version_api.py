"""GetVersion on an in-process replica (real etcd, real gRPC), and agents' versions as they
registered them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from inproc import Api, replica
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.version import API_VERSION, VERSION


@pytest.fixture(scope="module")
def api(etcd_endpoint: str) -> Iterator[Api]:
    yield from replica(etcd_endpoint)


def test_get_version(api: Api) -> None:
    reply = api.stub.GetVersion(cpb.GetVersionRequest())
    assert (reply.version, reply.api_version) == (VERSION, API_VERSION)


def test_agent_version_from_register(api: Api) -> None:
    api.gateway.Register(apb.RegisterRequest(node="v-node", spec=pb.NodeSpec(
        vcpus=1, memory_bytes=1 << 30, arches=[pb.ARCH_X86_64], agent_version="0.0.9")))
    node = api.stub.GetNode(cpb.GetNodeRequest(name="v-node"))
    assert node.spec.agent_version == "0.0.9"
