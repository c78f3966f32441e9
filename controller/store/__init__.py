"""The controller's only door to etcd. Closed: the rest of the controller calls the named
operations of `Store` (partitions, nodes, images, events, leader) and reads its watch-fed
cache; nobody else builds keys or transactions (docs/etcd-layout.md lists the keys)."""

from __future__ import annotations

from controller.store.cache import CachedPartition, ClusterCache
from controller.store.etcd import EtcdStore
from controller.store.events import EventStore, now_ts
from controller.store.images import ImageStore
from controller.store.keys import Keys
from controller.store.leader import LeaderStore
from controller.store.nodes import NodeStore
from controller.store.partitions import PartitionStore
from controller.store.records import (
    Allocation,
    AllocEntry,
    NodeGuard,
    StoredPartition,
)
from controller.store.secrets import SecretStore
from controller.store.tokens import TokenStore

__all__ = [
    "AllocEntry", "Allocation", "CachedPartition", "ClusterCache", "EtcdStore", "EventStore",
    "ImageStore", "Keys", "LeaderStore", "NodeGuard", "NodeStore", "PartitionStore",
    "SecretStore", "Store", "StoredPartition", "TokenStore", "now_ts",
]


class Store:
    """One controller replica's view of etcd: the client, the cache, the named operations."""

    def __init__(self, etcd: EtcdStore, prefix: str = "/viridian", source: str = "controller"
                 ) -> None:
        self.etcd = etcd
        self.keys = Keys(prefix)
        self.cache = ClusterCache(etcd, self.keys)
        self.leader = LeaderStore(etcd, self.keys)
        self.events = EventStore(etcd, self.keys, source)
        self.partitions = PartitionStore(etcd, self.keys, self.events, self.leader,
                                         self.cache)
        self.nodes = NodeStore(etcd, self.keys, self.events, self.leader)
        self.images = ImageStore(etcd, self.keys, self.leader)
        self.tokens = TokenStore(etcd, self.keys)
        self.secrets = SecretStore(etcd, self.keys)

    def close(self) -> None:
        self.etcd.close()
