"""A replica's in-memory view of cluster state, rebuilt from etcd and kept fresh by one watch.

Loops read this cache to decide; they never write it. Writes go to etcd (with compares) and
come back through the watch. Watches only notify subscribers (kind, name); subscribers
re-read what they need. A broken watch triggers a full reload, then every subscriber is told
to resync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from viridian.v1 import types_pb2 as pb

from controller.errors import StoreError, StoreUnavailable, WatchCompacted
from controller.store.etcd import KV, EtcdStore, WatchEvent
from controller.store.keys import Keys
from controller.store.records import Allocation, StoredPartition, decode

log = logging.getLogger(__name__)
LOAD_PAGE = 1000  # keys per range request while loading

T = TypeVar("T")
Listener = Callable[[str, str], None]  # (kind, name); kind "" = everything changed


@dataclass
class CachedPartition:
    partition: pb.Partition
    mod_revision: int


class ClusterCache:
    KINDS = ("nodes", "node-leases", "partitions", "bindings", "allocations", "images",
             "contents", "drains", "evictions", "tokens", "replicas")
    DELETED_KEPT = 10000  # last values of deleted partitions kept for dispatch's clean-up

    def __init__(self, etcd: EtcdStore, keys: Keys) -> None:
        self._etcd = etcd
        self._keys = keys
        self.nodes: dict[str, pb.Node] = {}
        self.node_leases: dict[str, KV] = {}
        self.partitions: dict[str, CachedPartition] = {}
        self.bindings: dict[str, KV] = {}
        self.allocations: dict[str, Allocation] = {}
        self.images: dict[str, pb.Image] = {}     # "NAME:TAG" -> tag record
        self.contents: dict[str, pb.Image] = {}   # digest -> content record
        self.replicas: dict[str, str] = {}        # identity -> agent-port address
        self.drains: dict[str, tuple[pb.NodeOperation, int]] = {}     # node -> (op, revision)
        self.evictions: dict[str, tuple[pb.NodeOperation, int]] = {}
        self.tokens: dict[str, pb.Token] = {}   # id -> token (authorization reads these)
        self.deleted_partitions: dict[str, pb.Partition] = {}  # last value, for clean-up
        # image digest -> how many partitions pin it (spec.image_digest), kept as they
        # change: the image GC asks often, and a scan of every partition cost 6% of a
        # replica at 100,000 partitions
        self._pins: dict[str, int] = {}
        self.revision = 0
        self._listeners: list[Listener] = []
        self._cancel: Callable[[], None] | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._reload_needed = True
        self._caught_up = asyncio.Event()
        self.reloads = 0   # full loads (the first included), and watches resumed without one
        self.resumes = 0
        self.load_seconds = 0.0   # how long the last full load took
        self.watched = 0   # keys the watch delivered (tests: which writes reach it)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def wait_for_revision(self, revision: int, timeout: float = 2.0) -> bool:
        """Wait until the watch has delivered `revision` (our own writes come back)."""
        # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancellation that
        # arrives as the event is set, and the caller's loop could then never be stopped.
        try:
            async with asyncio.timeout(timeout):
                while self.revision < revision:
                    self._caught_up.clear()
                    await self._caught_up.wait()
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cache")
        await self._ready.wait()

    async def stop(self) -> None:
        if self._cancel:
            self._cancel()
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        """Load, then watch from the revision loaded. A watch that breaks (a member died,
        hung, lost its leader) is resumed from the last revision applied, without a reload,
        as long as etcd still has that history; only a compacted revision (or an error of
        unknown kind) costs a reload, which at a million partitions takes tens of
        seconds."""
        reload = True
        while True:
            if reload:
                began = time.monotonic()
                try:
                    await self._load()
                except StoreError as err:
                    log.warning("cache reload failed: %s; retrying", err)
                    await asyncio.sleep(0.5)
                    continue
                self.reloads += 1
                self.load_seconds = time.monotonic() - began
                log.info("cache loaded at revision %d in %.2fs: %d partitions, %d nodes",
                         self.revision, self.load_seconds, len(self.partitions),
                         len(self.nodes))
            else:
                self.resumes += 1
                log.info("resuming the cluster watch from revision %d", self.revision + 1)
            self._lost.clear()
            # Everything under the prefix but the events: they are most of what is
            # written and no replica keeps them (keys.py, EVENTS_DIR).
            self._cancel = self._etcd.watch_prefix(
                self._keys.prefix + "/", self.revision + 1, self._on_events, self._on_lost,
                end=self._keys.watched_end)
            self._ready.set()
            if reload:
                self._notify("", "")
            await self._lost.wait()
            reload = self._reload_needed
            await asyncio.sleep(0.2)

    async def _load(self) -> None:
        # Only the kinds the cache keeps (not events), in pages, all at the revision of the
        # first page: one range of the whole prefix exceeds gRPC's 4 MiB message limit at
        # about 35,000 partitions.
        loaded: list[KV] = []
        revision = 0
        for kind in self.KINDS:
            kvs, revision = await self._etcd.get_prefix_paged(
                self._keys.kind(kind), revision, LOAD_PAGE)
            loaded.extend(kvs)
        # Swapped in without an await in between: nobody ever sees a half-loaded cache
        # (an empty one made every partition look deleted, and every node leaseless).
        before = {name: c.partition for name, c in self.partitions.items()}
        for target in (self.nodes, self.node_leases, self.partitions, self.bindings,
                       self.allocations, self.images, self.contents, self.drains,
                       self.evictions, self.tokens, self.replicas, self._pins):
            target.clear()
        for kv in loaded:
            self._apply(WatchEvent(False, kv))
        for name, p in before.items():  # deleted while the watch was down
            if name not in self.partitions:
                self.deleted_partitions[name] = p
        self.revision = revision

    def _on_lost(self, err: Exception) -> None:
        self._reload_needed = isinstance(err, WatchCompacted) or \
            not isinstance(err, StoreUnavailable)
        log.warning("cluster watch lost (%s); %s", err,
                    "reloading" if self._reload_needed else "resuming it")
        self._lost.set()

    def _on_events(self, events: list[WatchEvent], revision: int) -> None:
        self.watched += len(events)
        touched: list[tuple[str, str]] = []
        for ev in events:
            hit = self._apply(ev)
            if hit:
                touched.append(hit)
        # The header revision may run ahead of the events delivered so far: count only what
        # was applied.
        self.revision = max(self.revision, max(ev.kv.mod_revision for ev in events))
        self._caught_up.set()
        for kind, name in touched:
            self._notify(kind, name)

    def _apply(self, ev: WatchEvent) -> tuple[str, str] | None:
        parsed = self._keys.parse(ev.kv.key)
        if parsed is None or parsed[0] not in self.KINDS:
            return None
        kind, name = parsed
        kv = ev.kv
        if kind == "nodes":
            if ev.deleted:
                self.nodes.pop(name, None)
            else:
                node = decode(pb.Node, kv.value)
                node.revision = kv.mod_revision
                self.nodes[name] = node
        elif kind == "node-leases":
            self._put_or_pop(self.node_leases, name, None if ev.deleted else kv)
        elif kind == "partitions":
            if ev.deleted:
                old = self.partitions.pop(name, None)
                if old is not None:
                    self._pin(old.partition.spec.image_digest, -1)
                    self.deleted_partitions[name] = old.partition
                    while len(self.deleted_partitions) > self.DELETED_KEPT:
                        del self.deleted_partitions[next(iter(self.deleted_partitions))]
            else:
                p = decode(pb.Partition, kv.value)
                p.revision = kv.mod_revision
                old = self.partitions.get(name)
                if old is not None:
                    self._pin(old.partition.spec.image_digest, -1)
                self._pin(p.spec.image_digest, 1)
                self.partitions[name] = CachedPartition(p, kv.mod_revision)
                self.deleted_partitions.pop(name, None)
        elif kind == "bindings":
            self._put_or_pop(self.bindings, name, None if ev.deleted else kv)
            return ("partitions", name)
        elif kind == "allocations":
            self._put_or_pop(self.allocations, name,
                             None if ev.deleted else Allocation.decode(name, kv))
        elif kind == "images":
            self._put_or_pop(self.images, name,
                             None if ev.deleted else decode(pb.Image, kv.value))
        elif kind == "contents":
            self._put_or_pop(self.contents, name,
                             None if ev.deleted else decode(pb.Image, kv.value))
        elif kind == "replicas":
            self._put_or_pop(self.replicas, name,
                             None if ev.deleted else kv.value.decode(errors="replace"))
        elif kind in ("drains", "evictions"):
            target = self.drains if kind == "drains" else self.evictions
            self._put_or_pop(target, name, None if ev.deleted else
                             (decode(pb.NodeOperation, kv.value), kv.mod_revision))
        elif kind == "tokens":
            self._put_or_pop(self.tokens, name,
                             None if ev.deleted else decode(pb.Token, kv.value))
        return (kind, name)

    def _pin(self, digest: str, by: int) -> None:
        if not digest:
            return
        count = self._pins.get(digest, 0) + by
        if count > 0:
            self._pins[digest] = count
        else:
            self._pins.pop(digest, None)

    @staticmethod
    def _put_or_pop(target: dict[str, T], name: str, value: T | None) -> None:
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value

    def _notify(self, kind: str, name: str) -> None:
        for listener in self._listeners:
            try:
                listener(kind, name)
            except Exception:  # a broken listener must not stop the others
                log.exception("cache listener failed")

    # -- derived views -------------------------------------------------------------------

    def epoch(self, name: str) -> int:
        kv = self.bindings.get(name)
        return kv.mod_revision if kv else 0

    def bound_node(self, name: str) -> str:
        kv = self.bindings.get(name)
        return kv.value.decode() if kv else ""

    def node_alive(self, name: str) -> bool:
        return name in self.node_leases

    def stored(self, name: str) -> StoredPartition | None:
        """A copy of partition `name` with its binding, as this replica sees it now."""
        c = self.partitions.get(name)
        if c is None:
            return None
        p = pb.Partition()
        p.CopyFrom(c.partition)
        sp = StoredPartition(p, c.mod_revision)
        binding = self.bindings.get(name)
        if binding is not None:
            sp.binding_node = binding.value.decode()
            sp.binding_revision = binding.mod_revision
            p.status.epoch = binding.mod_revision
        return sp

    def pinned_digests(self) -> set[str]:
        """Image digests some partition pins (spec.image_digest)."""
        return set(self._pins)

    def image_users(self) -> dict[str, list[str]]:
        """digest -> names of the partitions pinned to it (sorted)."""
        users: dict[str, list[str]] = {}
        for name in sorted(self.partitions):
            digest = self.partitions[name].partition.spec.image_digest
            if digest:
                users.setdefault(digest, []).append(name)
        return users

    def bound_to(self, node: str) -> list[str]:
        """Names of the partitions bound to node (from its allocation record)."""
        alloc = self.allocations.get(node)
        return sorted(alloc.entries) if alloc is not None else []
