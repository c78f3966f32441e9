"""The store's plain value types, shared by the facade (etcd.py) and the watch module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KV


def kv_from_pb(raw: Any) -> KV:
    return KV(
        key=raw.key.decode(),
        value=bytes(raw.value),
        mod_revision=int(raw.mod_revision),
        create_revision=int(raw.create_revision),
        lease=int(raw.lease),
    )


def prefix_end(prefix: str) -> bytes:
    """The range end that covers every key starting with prefix."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)
