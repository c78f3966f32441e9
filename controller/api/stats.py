"""Public API: resource use (GetPartitionStats, WatchStats), like `kubectl top`.

Agents measure their running partitions every couple of seconds and send the figures over
their session (node_agent/usage.py); the replica holding a node's session keeps the newest
in memory (NodeSession.usage), never in etcd. A replica answers from its own sessions and
asks the replicas holding the others (WatchStats with local_only, on their agent port, as
logs are relayed). A sample counts only for the copy the partition is bound to (node and
epoch), so a stale or misdirected report cannot show up as another partition's use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import controller_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.api.nodes import with_usage
from controller.errors import NotFound
from controller.grpc_errors import Context, map_errors, map_stream_errors
from controller.validation import check_name

log = logging.getLogger(__name__)
DEFAULT_INTERVAL_MS = 2000
MIN_INTERVAL_MS = 500
PEER_TIMEOUT_S = 3.0


def partition_stats(p: pb.Partition, sample: apb.PartitionUsage | None) -> cpb.PartitionStats:
    st = p.status
    out = cpb.PartitionStats(name=p.name, node=st.node, phase=st.phase, vcpus=p.spec.vcpus,
                             memory_bytes=p.spec.memory_bytes)
    if sample is not None and sample.epoch == st.epoch and st.node:
        out.measured = True
        out.cpu_cores = sample.cpu_cores
        out.cpu_seconds = sample.cpu_seconds
        out.resident_bytes = sample.resident_bytes
        out.uptime_seconds = sample.uptime_seconds
        out.sampled_at.CopyFrom(sample.time)
    return out


def node_stats(node: pb.Node, parts: Iterable[cpb.PartitionStats],
               connected: bool) -> cpb.NodeStats:
    st = node.status
    out = cpb.NodeStats(
        name=node.name, vcpus=node.spec.vcpus, allocatable_vcpus=st.allocatable_vcpus,
        allocated_vcpus=st.allocated_vcpus, memory_bytes=node.spec.memory_bytes,
        allocatable_memory_bytes=st.allocatable_memory_bytes,
        allocated_memory_bytes=st.allocated_memory_bytes, connected=connected)
    for p in parts:
        if p.node == node.name and p.measured:
            out.partitions += 1
            out.cpu_cores += p.cpu_cores
            out.resident_bytes += p.resident_bytes
    return out


class StatsApi:
    ctx: ApiContext

    def _local_samples(self) -> dict[str, tuple[str, apb.PartitionUsage]]:
        """partition -> (node, sample) from the sessions this replica holds."""
        out: dict[str, tuple[str, apb.PartitionUsage]] = {}
        for session in self.ctx.sessions.all():
            for name, sample in session.usage.items():
                out[name] = (session.node, sample)
        return out

    def _bound(self, node: str) -> list[pb.Partition]:
        """Partitions bound to a node (to `node` if given), with their epochs."""
        cache = self.ctx.store.cache
        out = []
        for name in sorted(cache.partitions):
            st = cache.partitions[name].partition.status
            if st.node and (not node or st.node == node):
                sp = cache.stored(name)
                if sp is not None:
                    out.append(sp.partition)
        return out

    async def _remote_samples(self, nodes: set[str]) -> dict[str, tuple[str, apb.PartitionUsage]]:
        """Samples of nodes whose sessions other replicas hold, asked of those replicas."""
        holders: set[str] = set()
        for node in sorted(nodes):
            address = await self.ctx.store.nodes.session_holder(node)
            if address and address != self.ctx.advertise:
                holders.add(address)
        found: dict[str, tuple[str, apb.PartitionUsage]] = {}
        results = await asyncio.gather(*(self._ask(a) for a in sorted(holders)))
        for snapshot in results:
            if snapshot is None:
                continue
            for ps in snapshot.partitions:
                if ps.measured and ps.node in nodes:
                    found[ps.name] = (ps.node, apb.PartitionUsage(
                        name=ps.name, cpu_seconds=ps.cpu_seconds, cpu_cores=ps.cpu_cores,
                        resident_bytes=ps.resident_bytes, uptime_seconds=ps.uptime_seconds,
                        time=ps.sampled_at))
        return found

    async def _ask(self, address: str) -> cpb.StatsSnapshot | None:
        try:
            async with self.ctx.dialer.aio_channel(address) as channel:
                stub: Any = controller_pb2_grpc.ControllerStub(channel)
                call = stub.WatchStats(cpb.WatchStatsRequest(once=True, local_only=True),
                                       timeout=PEER_TIMEOUT_S)
                async for snapshot in call:
                    return snapshot  # type: ignore[no-any-return]
        except Exception as err:  # noqa: BLE001 - a replica away: its nodes show unmeasured
            log.info("stats from replica %s unavailable: %s", address, err)
        return None

    async def snapshot(self, node: str, local_only: bool) -> cpb.StatsSnapshot:
        parts = self._bound(node)
        samples = self._local_samples()
        held = set(self.ctx.sessions.nodes())
        if not local_only:
            away = {p.status.node for p in parts} - held
            if away:
                samples.update(await self._remote_samples(away))
        stats = []
        for p in parts:
            node_and_sample = samples.get(p.name)
            sample = None
            if node_and_sample is not None and node_and_sample[0] == p.status.node:
                sample = node_and_sample[1]
                if not sample.epoch:          # relayed: the holder checked the epoch
                    sample = apb.PartitionUsage()
                    sample.CopyFrom(node_and_sample[1])
                    sample.epoch = p.status.epoch
            stats.append(partition_stats(p, sample))
        out = cpb.StatsSnapshot(partitions=stats)
        out.time.GetCurrentTime()
        if local_only:
            return out
        cache = self.ctx.store.cache
        alive = set(cache.node_leases)
        for name in sorted(cache.nodes):
            if node and name != node:
                continue
            n = pb.Node()
            n.CopyFrom(cache.nodes[name])
            with_usage(n, cache.allocations.get(name), name in alive)
            out.nodes.append(node_stats(n, stats, name in alive))
        return out

    @map_errors
    async def GetPartitionStats(
        self, request: cpb.GetPartitionStatsRequest, context: Context
    ) -> cpb.PartitionStats:
        check_name("partition", request.name)
        cached = self.ctx.store.cache.stored(request.name)
        if cached is None:
            raise NotFound(f"partition {request.name!r} not found")
        node = cached.partition.status.node
        snap = await self.snapshot(node, local_only=False) if node else None
        for ps in snap.partitions if snap is not None else []:
            if ps.name == request.name:
                return ps
        return partition_stats(cached.partition, None)

    @map_stream_errors
    async def WatchStats(
        self, request: cpb.WatchStatsRequest, context: Context
    ) -> AsyncIterator[cpb.StatsSnapshot]:
        if request.node:
            check_name("node", request.node)
        interval = max(MIN_INTERVAL_MS, request.interval_ms or DEFAULT_INTERVAL_MS) / 1000
        while True:
            yield await self.snapshot(request.node, request.local_only)
            if request.once or request.local_only:
                return
            await asyncio.sleep(interval)

