"""What etcd says, read independently of Viridian's own store code (which is being rewritten):
one read-only etcd transaction over the kinds the checker needs, so every snapshot is one
revision, linearizable (a member cut off from its quorum answers with an error, never with
stale data). Values are decoded with viridian.v1's protobuf types; keys of kinds not listed
here (drains/, evictions/, ~events/, contents/ ...) are never read.

    view = EtcdView(["10.213.0.2:2379", "10.213.0.3:2379", "10.213.0.4:2379"])
    snap = view.snapshot()          # raises EtcdUnavailable when no member answers
    snap.bindings["web-1"]          # Binding(node="node-2", revision=1234): the epoch

The members are tried in turn, the last one that answered first, each with a short
deadline, so a frozen or dead member costs one deadline and no more.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from pyetcd.etcdrpc import rpc_pb2, rpc_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller.security.pki import ETCD_NAME

__all__ = ["Binding", "EtcdUnavailable", "EtcdView", "Snapshot", "prefix_end"]

# Reconnect quickly after a member comes back (gRPC's default back-off grows to 120 s).
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]


class EtcdUnavailable(Exception):
    """No member answered the read in time (every error, one per member, in the message)."""


@dataclass(frozen=True)
class Binding:
    node: str
    revision: int  # the binding key's mod revision: the partition's epoch


@dataclass(frozen=True)
class Snapshot:
    """Everything the checker reads, at one etcd revision."""

    revision: int
    partitions: dict[str, pb.Partition]
    bindings: dict[str, Binding]
    nodes: dict[str, pb.Node]
    node_leases: dict[str, str]  # node -> the controller replica holding its session
    leader: str  # the leader key's value ("" when none)
    member: str  # the endpoint that answered


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdView:
    def __init__(self, endpoints: Sequence[str], prefix: str = "/viridian",
                 timeout: float = 1.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.endpoints = list(endpoints)
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        if credentials is None:
            self._channels = [grpc.insecure_channel(e, options=CHANNEL_OPTIONS)
                              for e in self.endpoints]
        else:  # members are reached by address; their certificates name them by role
            options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", ETCD_NAME)]
            self._channels = [grpc.secure_channel(e, credentials, options=options)
                              for e in self.endpoints]
        self._stubs = [rpc_pb2_grpc.KVStub(ch) for ch in self._channels]
        self._good = 0
        kinds = ("partitions", "bindings", "nodes", "node-leases")
        ranges = []
        for kind in kinds:
            key = f"{self.prefix}/{kind}/".encode()
            ranges.append(rpc_pb2.RangeRequest(key=key, range_end=prefix_end(key)))
        ranges.append(rpc_pb2.RangeRequest(key=f"{self.prefix}/leader".encode()))
        self._request = rpc_pb2.TxnRequest(
            success=[rpc_pb2.RequestOp(request_range=r) for r in ranges])

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def snapshot(self) -> Snapshot:
        errors: list[str] = []
        for i in range(len(self._stubs)):
            k = (self._good + i) % len(self._stubs)
            try:
                reply = self._stubs[k].Txn(self._request, timeout=self.timeout)
            except grpc.RpcError as err:
                code = err.code().name if isinstance(err, grpc.Call) else "?"
                errors.append(f"{self.endpoints[k]}: {code}")
                continue
            self._good = k
            return self._decode(reply, self.endpoints[k])
        raise EtcdUnavailable("; ".join(errors))

    def _decode(self, reply: rpc_pb2.TxnResponse, member: str) -> Snapshot:
        parts, binds, nodes, leases, leader = (r.response_range.kvs for r in reply.responses)

        def name(key: bytes) -> str:
            return key.decode().rsplit("/", 1)[-1]

        return Snapshot(
            revision=reply.header.revision,
            partitions={name(kv.key): pb.Partition.FromString(kv.value) for kv in parts},
            bindings={name(kv.key): Binding(kv.value.decode(), kv.mod_revision)
                      for kv in binds},
            nodes={name(kv.key): pb.Node.FromString(kv.value) for kv in nodes},
            node_leases={name(kv.key): kv.value.decode() for kv in leases},
            leader=leader[0].value.decode() if leader else "",
            member=member,
        )


def wait_readable(view: EtcdView, timeout: float) -> Snapshot:
    """The first snapshot that can be read within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return view.snapshot()
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
