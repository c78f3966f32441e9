"""`last heartbeat` as it is now, without an etcd write per heartbeat.

A node's record holds the time of its registration only. For a node whose session this
replica holds, the time comes from the session (when its last heartbeat arrived). For one
whose session another replica holds, it comes from that replica's node lease, which its
lease key is attached to: etcd reports the lease's remaining and granted TTL, and the lease
was last renewed (for the heartbeats that had arrived) about `granted - remaining` seconds
ago, to etcd's one-second resolution. That replica renews it while any of its nodes beat,
and ends a node silent for the TTL, so the time is right to within the TTL. One lookup per
replica lease, not per node."""

from __future__ import annotations

import asyncio
import time

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import types_pb2 as pb

from controller.errors import StoreError
from controller.gateway.sessions import SessionRegistry
from controller.store import Store

LOOKUPS_IN_FLIGHT = 4   # lease lookups at etcd at once: leave room for the rest


def _set_if_newer(node: pb.Node, at: float) -> None:
    current = node.status.last_heartbeat
    if at > current.seconds + current.nanos / 1e9:
        stamp = Timestamp()
        stamp.FromNanoseconds(int(at * 1e9))
        current.CopyFrom(stamp)


def local_heartbeat(sessions: SessionRegistry, name: str) -> float | None:
    """Wall-clock time of the last message of the node's session on this replica."""
    session = sessions.get(name)
    if session is None:
        return None
    seen = session.beat_at or session.last_seen
    if not seen:
        return None
    return time.time() - max(asyncio.get_running_loop().time() - seen, 0.0)


async def lease_renewed(store: Store, lease: int) -> float | None:
    """Wall-clock time of a lease's last renewal, from its remaining TTL."""
    try:
        remaining, granted = await store.etcd.lease_times(lease)
    except StoreError:
        return None
    if remaining <= 0 or granted <= 0:
        return None
    return time.time() - max(granted - remaining, 0)


async def refresh(store: Store, sessions: SessionRegistry, nodes: list[pb.Node]) -> None:
    """Move each node's last_heartbeat to the newest time known (never backwards)."""
    limit = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)
    renewed: dict[int, asyncio.Task[float | None]] = {}   # lease -> its lookup

    async def lookup(lease: int) -> float | None:
        async with limit:
            return await lease_renewed(store, lease)

    async def one(node: pb.Node) -> None:
        at = local_heartbeat(sessions, node.name)
        kv = store.cache.node_leases.get(node.name)
        if at is None and node.status.state == pb.NODE_STATE_READY and kv is not None \
                and kv.lease:
            if kv.lease not in renewed:
                renewed[kv.lease] = asyncio.ensure_future(lookup(kv.lease))
            at = await renewed[kv.lease]
        if at is not None:
            _set_if_newer(node, at)

    await asyncio.gather(*(one(n) for n in nodes))
