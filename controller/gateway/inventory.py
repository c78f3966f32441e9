"""Inventory reconciliation: what a node actually runs, checked against the bindings.

Every heartbeat lists the node's live workers (partition, epoch). A worker with no binding
at its epoch on this node — deleted or re-bound while the node was away, a FORGET lost with
a session, a delete missed during a cache reload — is told to FORGET that epoch; a partition
bound here at an epoch the agent reported, in a phase the agent must know, that has no worker
any more is reported NOT_RUNNING to the state machine (it failed: the restart policy or HA
decides what follows). Both are confirmed with a fresh etcd read first: the cache may lag.
So no orphan outlives a heartbeat interval plus a read, and no partition stays Running in
etcd without a worker.

Work proportional to change: a heartbeat whose inventory is the one last checked for that
session, when that check found everything in order and nothing the check reads about the
node has changed since (a partition bound to it or told to it, its allocation record, a
cache reload), is not checked again: at thousands of nodes and a million partitions the
check would otherwise walk every node's partitions on every heartbeat. Every
``FULL_CHECK_S`` each session is checked anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.errors import Conflict, NotFound, StoreError
from controller.gateway.sessions import NodeSession, SessionRegistry
from controller.partitions.actions import PartitionActions
from controller.partitions.machine import Reported
from controller.store import Store

log = logging.getLogger(__name__)
P = pb
# Phases the agent has reported (so it must know them): a missing worker means it is gone.
KNOWN = (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED,
         P.PARTITION_PHASE_SAVING, P.PARTITION_PHASE_STOPPING)
FORGET_AGAIN_S = 1.0  # re-send a FORGET for the same copy at most this often
FULL_CHECK_S = 30.0   # check a session's inventory at least this often, changed or not


class _Checked:
    """What the last check of one session saw, when it found everything in order."""

    __slots__ = ("inventory", "at")

    def __init__(self, inventory: tuple[tuple[str, int], ...], at: float) -> None:
        self.inventory, self.at = inventory, at


class InventoryChecker:
    def __init__(self, store: Store, actions: PartitionActions,
                 sessions: SessionRegistry) -> None:
        self.store = store
        self.actions = actions
        self.sessions = sessions
        # session id -> its last check that found nothing to do; dropped by any change
        # that concerns its node
        self._clean: dict[str, _Checked] = {}
        # changes counted, and the count at each node's latest change (or everything's):
        # a check that a change overlapped is not taken as clean
        self._changes = 0
        self._node_changed: dict[str, int] = {}
        self._all_changed = 0
        self.skipped = 0   # heartbeats not checked again (for tests and benches)
        store.cache.subscribe(self._on_change)

    def _on_change(self, kind: str, name: str) -> None:
        self._changes += 1
        if kind == "":
            self._all_changed = self._changes
            self._clean.clear()
            return
        nodes: set[str] = set()
        if kind == "partitions":
            nodes.add(self.store.cache.bound_node(name))
            nodes.update(s.node for s in self.sessions.told(name))
        elif kind == "allocations":
            nodes.add(name)
        else:
            return
        for node in nodes:
            if node:
                self._node_changed[node] = self._changes
            session = self.sessions.get(node) if node else None
            if session is not None:
                self._clean.pop(session.session_id, None)

    async def check(self, session: NodeSession,
                    inventory: Sequence[apb.InventoryEntry]) -> None:
        seen = tuple((e.name, e.epoch) for e in inventory)
        now = asyncio.get_running_loop().time()
        last = self._clean.get(session.session_id)
        if last is not None and last.inventory == seen and now - last.at < FULL_CHECK_S:
            self.skipped += 1
            return
        self._clean.pop(session.session_id, None)
        began = self._changes
        try:
            acted = await self._unexpected(session, inventory)
            acted |= await self._missing(session, {e.name: e.epoch for e in inventory})
        except StoreError as err:
            log.info("inventory of %s: %s (next heartbeat)", session.node, err)
            return
        overlapped = max(self._all_changed, self._node_changed.get(session.node, 0)) > began
        if not acted and not overlapped and not session.closed:
            self._clean[session.session_id] = _Checked(seen, now)

    def session_ended(self, session: NodeSession) -> None:
        self._clean.pop(session.session_id, None)

    async def _unexpected(self, session: NodeSession,
                          inventory: Sequence[apb.InventoryEntry]) -> bool:
        """Tell the node to forget copies not bound there; whether any was found."""
        cache, node = self.store.cache, session.node
        acted = False
        now = asyncio.get_running_loop().time()
        for entry in inventory:
            name, epoch = entry.name, entry.epoch
            if cache.bound_node(name) == node and cache.epoch(name) == epoch:
                session.assign(name, epoch)
                continue
            acted = True
            if now - session.forgotten.get((name, epoch), -FORGET_AGAIN_S) < FORGET_AGAIN_S:
                continue
            try:
                sp = await self.store.partitions.get(name)
            except NotFound:
                sp = None
            if sp is not None and sp.binding_node == node and sp.binding_revision == epoch:
                session.assign(name, epoch)   # the cache lags: not in order yet
                continue
            log.warning("node %s runs %s at epoch %d, which is not bound there; stopping it",
                        node, name, epoch)
            session.forget(name, epoch, purge=sp is None)
            session.forgotten[(name, epoch)] = now
        for key, at in list(session.forgotten.items()):
            if now - at > 60:
                del session.forgotten[key]
        return acted

    async def _missing(self, session: NodeSession, running: dict[str, int]) -> bool:
        """Report partitions bound here that the node no longer runs; whether any might be."""
        cache, node = self.store.cache, session.node
        acted = False
        for name in cache.bound_to(node):
            cached = cache.partitions.get(name)
            epoch = cache.epoch(name)
            if cached is None or cached.partition.status.phase not in KNOWN:
                continue
            if running.get(name) == epoch or cache.bound_node(name) != node:
                continue
            acted = True
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
        return acted
