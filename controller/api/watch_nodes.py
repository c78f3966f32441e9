"""Public API: WatchNodes, fed by the replica's cache as WatchPartitions is.

A node's row is its record plus what other keys say about it (lease: alive; allocation:
usage; drain and eviction records), so a change to any of them re-sends the node. A node is
sent only when what a client would see differs from what it was last sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.api.nodes import with_usage
from controller.grpc_errors import Context
from controller.store.cache import ClusterCache

__all__ = ["WatchNodesApi", "node_view"]

NODE_KINDS = ("", "nodes", "node-leases", "allocations", "drains", "evictions")


def node_view(cache: ClusterCache, name: str) -> pb.Node | None:
    """Node `name` as GetNode shows it, from the cache (None when there is no such node)."""
    stored = cache.nodes.get(name)
    if stored is None:
        return None
    node = pb.Node()
    node.CopyFrom(stored)
    return with_usage(node, cache.allocations.get(name), cache.node_alive(name),
                      cache.drains.get(name, (None, 0))[0],
                      cache.evictions.get(name, (None, 0))[0])


class WatchNodesApi:
    ctx: ApiContext

    async def WatchNodes(
        self, request: cpb.WatchNodesRequest, context: Context
    ) -> AsyncIterator[cpb.NodeWatchEvent]:
        cache = self.ctx.store.cache
        changed: asyncio.Queue[str] = asyncio.Queue()

        def listener(kind: str, name: str) -> None:
            if kind in NODE_KINDS and (not request.name or name in ("", request.name)):
                changed.put_nowait(name)

        cache.subscribe(listener)
        sent: dict[str, bytes] = {}
        try:
            changed.put_nowait("")
            while True:
                name = await changed.get()
                if name:
                    names = [name]
                elif request.name:
                    names = [request.name]
                else:
                    names = sorted(set(cache.nodes) | set(sent))
                for n in names:
                    node = node_view(cache, n)
                    if node is None:
                        if sent.pop(n, None) is not None:
                            yield cpb.NodeWatchEvent(type=cpb.NodeWatchEvent.TYPE_DELETED,
                                                     node=pb.Node(name=n))
                        continue
                    shown = node.SerializeToString(deterministic=True)
                    if sent.get(n) == shown:
                        continue
                    sent[n] = shown
                    yield cpb.NodeWatchEvent(type=cpb.NodeWatchEvent.TYPE_PUT, node=node)
        finally:
            cache.unsubscribe(listener)
