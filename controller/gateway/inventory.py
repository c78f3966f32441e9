"""Inventory reconciliation: what a node actually runs, checked against the bindings.

Every heartbeat lists the node's live workers (partition, epoch). A worker with no binding
at its epoch on this node — deleted or re-bound while the node was away, a FORGET lost with
a session, a delete missed during a cache reload — is told to FORGET that epoch; a partition
bound here at an epoch the agent reported, in a phase the agent must know, that has no worker
any more is reported NOT_RUNNING to the state machine (it failed: the restart policy or HA
decides what follows). Both are confirmed with a fresh etcd read first: the cache may lag.
So no orphan outlives a heartbeat interval plus a read, and no partition stays Running in
etcd without a worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.errors import Conflict, NotFound, StoreError
from controller.gateway.sessions import NodeSession
from controller.partitions.actions import PartitionActions
from controller.partitions.machine import Reported
from controller.store import Store

log = logging.getLogger(__name__)
P = pb
# Phases the agent has reported (so it must know them): a missing worker means it is gone.
KNOWN = (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED,
         P.PARTITION_PHASE_SAVING, P.PARTITION_PHASE_STOPPING)
FORGET_AGAIN_S = 1.0  # re-send a FORGET for the same copy at most this often


class InventoryChecker:
    def __init__(self, store: Store, actions: PartitionActions) -> None:
        self.store = store
        self.actions = actions

    async def check(self, session: NodeSession,
                    inventory: Sequence[apb.InventoryEntry]) -> None:
        try:
            await self._unexpected(session, inventory)
            await self._missing(session, {e.name: e.epoch for e in inventory})
        except StoreError as err:
            log.info("inventory of %s: %s (next heartbeat)", session.node, err)

    async def _unexpected(self, session: NodeSession,
                          inventory: Sequence[apb.InventoryEntry]) -> None:
        cache, node = self.store.cache, session.node
        now = asyncio.get_running_loop().time()
        for entry in inventory:
            name, epoch = entry.name, entry.epoch
            if cache.bound_node(name) == node and cache.epoch(name) == epoch:
                session.assigned[name] = epoch
                continue
            if now - session.forgotten.get((name, epoch), -FORGET_AGAIN_S) < FORGET_AGAIN_S:
                continue
            try:
                sp = await self.store.partitions.get(name)
            except NotFound:
                sp = None
            if sp is not None and sp.binding_node == node and sp.binding_revision == epoch:
                session.assigned[name] = epoch
                continue
            log.warning("node %s runs %s at epoch %d, which is not bound there; stopping it",
                        node, name, epoch)
            session.forget(name, epoch, purge=sp is None)
            session.forgotten[(name, epoch)] = now
        for key, at in list(session.forgotten.items()):
            if now - at > 60:
                del session.forgotten[key]

    async def _missing(self, session: NodeSession, running: dict[str, int]) -> None:
        cache, node = self.store.cache, session.node
        for name in cache.bound_to(node):
            cached = cache.partitions.get(name)
            epoch = cache.epoch(name)
            if cached is None or cached.partition.status.phase not in KNOWN:
                continue
            if running.get(name) == epoch or cache.bound_node(name) != node:
                continue
            try:
                sp = await self.store.partitions.get(name)
            except NotFound:
                continue
            if (sp.binding_node != node or sp.partition.status.phase not in KNOWN
                    or sp.binding_revision != epoch):
                continue
            log.warning("node %s no longer runs %s (epoch %d)", node, name, epoch)
            gone = Reported(node, P.PARTITION_PHASE_FAILED, apb.REPORT_CAUSE_NOT_RUNNING,
                            reason="the node no longer runs it (its worker is gone)")
            try:
                await self.actions.apply_at(name, node, epoch, gone)
            except (NotFound, Conflict):
                pass
