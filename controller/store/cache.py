"""A replica's in-memory view of cluster state, rebuilt from etcd and kept fresh by one watch.

Loops read this cache to decide; they never write it. Writes go to etcd (with compares) and
come back through the watch. Watches only notify subscribers (kind, name); subscribers
re-read what they need. A broken watch triggers a full reload, then every subscriber is told
to resync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from viridian.v1 import types_pb2 as pb

from controller.errors import StoreError
from controller.store.etcd import KV, EtcdStore, WatchEvent
from controller.store.keys import Keys
from controller.store.objects import Allocation, decode

log = logging.getLogger(__name__)
LOAD_PAGE = 1000  # keys per range request while loading

Listener = Callable[[str, str], None]  # (kind, name); kind "" = everything changed


@dataclass
class CachedPartition:
    partition: pb.Partition
    mod_revision: int


class ClusterCache:
    KINDS = ("nodes", "node-leases", "partitions", "bindings", "allocations", "images")

    def __init__(self, etcd: EtcdStore, keys: Keys) -> None:
        self._etcd = etcd
        self._keys = keys
        self.nodes: dict[str, pb.Node] = {}
        self.node_leases: dict[str, KV] = {}
        self.partitions: dict[str, CachedPartition] = {}
        self.bindings: dict[str, KV] = {}
        self.allocations: dict[str, Allocation] = {}
        self.images: dict[str, pb.Image] = {}
        self.deleted_partitions: dict[str, pb.Partition] = {}  # last value, for cleanup
        self.revision = 0
        self._listeners: list[Listener] = []
        self._cancel: Callable[[], None] | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._caught_up = asyncio.Event()

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
        while True:
            try:
                await self._load()
            except StoreError as err:
                log.warning("cache reload failed: %s; retrying", err)
                await asyncio.sleep(0.5)
                continue
            self._lost.clear()
            self._cancel = self._etcd.watch_prefix(
                self._keys.prefix + "/", self.revision + 1, self._on_events, self._on_lost
            )
            self._ready.set()
            self._notify("", "")
            await self._lost.wait()
            await asyncio.sleep(0.2)

    async def _load(self) -> None:
        # Only the kinds the cache keeps (not blobs or events), in pages, all at the revision
        # of the first page: one range of the whole prefix exceeds gRPC's 4 MiB message
        # limit at about 35,000 partitions (and with any image's blob chunks).
        self.nodes.clear()
        self.node_leases.clear()
        self.partitions.clear()
        self.bindings.clear()
        self.allocations.clear()
        self.images.clear()
        revision = 0
        for kind in self.KINDS:
            kvs, revision = await self._etcd.get_prefix_paged(
                f"{self._keys.prefix}/{kind}/", revision, LOAD_PAGE)
            for kv in kvs:
                self._apply(WatchEvent(False, kv))
        self.revision = revision

    def _on_lost(self, err: Exception) -> None:
        log.warning("cluster watch lost (%s); reloading", err)
        self._lost.set()

    def _on_events(self, events: list[WatchEvent], revision: int) -> None:
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
        rest = ev.kv.key[len(self._keys.prefix) + 1 :]
        kind, _, name = rest.partition("/")
        if kind not in self.KINDS or not name:
            return None
        kv = ev.kv
        if kind == "nodes":
            if ev.deleted:
                self.nodes.pop(name, None)
            else:
                node = decode(pb.Node, kv.value)
                node.revision = kv.mod_revision
                self.nodes[name] = node
        elif kind == "node-leases":
            if ev.deleted:
                self.node_leases.pop(name, None)
            else:
                self.node_leases[name] = kv
        elif kind == "partitions":
            if ev.deleted:
                old = self.partitions.pop(name, None)
                if old is not None:
                    # The binding is deleted in the same transaction, after the partition.
                    old.partition.status.epoch = self.epoch(name)
                    self.deleted_partitions[name] = old.partition
            else:
                p = decode(pb.Partition, kv.value)
                p.revision = kv.mod_revision
                self.partitions[name] = CachedPartition(p, kv.mod_revision)
                self.deleted_partitions.pop(name, None)
        elif kind == "bindings":
            if ev.deleted:
                self.bindings.pop(name, None)
            else:
                self.bindings[name] = kv
        elif kind == "allocations":
            if ev.deleted:
                self.allocations.pop(name, None)
            else:
                self.allocations[name] = Allocation.decode(name, kv)
        elif kind == "images":
            if ev.deleted:
                self.images.pop(name, None)
            else:
                self.images[name] = decode(pb.Image, kv.value)
        if kind == "bindings":
            return ("partitions", name)
        return (kind, name)

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
