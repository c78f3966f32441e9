"""The store's value types: a partition as stored (with its binding), a node's allocation
record, and the protobuf codecs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from google.protobuf.message import Message
from viridian.v1 import types_pb2 as pb

from controller.store.etcd import KV

M = TypeVar("M", bound=Message)


def decode(cls: type[M], raw: bytes) -> M:
    msg = cls()
    msg.ParseFromString(raw)
    return msg


def encode(msg: Message) -> bytes:
    """Serialize msg without its read-only fields (revision; a partition's epoch)."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    if copy.DESCRIPTOR.fields_by_name.get("revision") is not None:
        copy.ClearField("revision")
    if isinstance(copy, pb.Partition):
        copy.status.epoch = 0
    if isinstance(copy, pb.Node):
        copy.status.ClearField("drain")  # kept under drains/ and evictions/, not here
        copy.status.ClearField("eviction")
    return copy.SerializeToString()


@dataclass(frozen=True)
class AllocEntry:
    vcpus: int
    memory_bytes: int
    group: str = ""


@dataclass
class Allocation:
    """What is bound to one node, as stored in allocations/NODE."""

    node: str
    entries: dict[str, AllocEntry] = field(default_factory=dict)
    mod_revision: int = 0  # 0 = the key does not exist yet

    def encode(self) -> bytes:
        return json.dumps(
            {n: [e.vcpus, e.memory_bytes, e.group] for n, e in sorted(self.entries.items())},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, node: str, kv: KV | None) -> Allocation:
        if kv is None:
            return cls(node)
        raw = json.loads(kv.value or b"{}")
        entries = {n: AllocEntry(int(v[0]), int(v[1]), str(v[2])) for n, v in raw.items()}
        return cls(node, entries, kv.mod_revision)

    def copy(self) -> Allocation:
        return Allocation(self.node, dict(self.entries), self.mod_revision)

    @property
    def vcpus(self) -> int:
        return sum(e.vcpus for e in self.entries.values())

    @property
    def memory_bytes(self) -> int:
        return sum(e.memory_bytes for e in self.entries.values())


@dataclass
class StoredPartition:
    """A partition as read: the object, its key's mod revision, and its binding."""

    partition: pb.Partition
    mod_revision: int
    binding_node: str = ""
    binding_revision: int = 0  # the epoch; 0 = unbound


@dataclass(frozen=True)
class NodeGuard:
    """What a placement decision saw of its node: bind compares both revisions, so a node
    cordoned, re-registered or lost since the snapshot cannot receive the partition."""

    node_revision: int
    lease_revision: int


class NoteLike(Protocol):
    """An event to record with a write (the state machine's Note)."""

    @property
    def reason(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def warning(self) -> bool: ...


class WriteLike(Protocol):
    """What to write for one partition (the state machine's Outcome)."""

    partition: pb.Partition
    write: bool
    release: bool
    bind: str
    delete: bool

    @property
    def notes(self) -> Sequence[NoteLike]: ...
