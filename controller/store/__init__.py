"""The controller's only door to etcd: keys, codecs and an asyncio facade over the client."""

from controller.store.etcd import KV, Compare, EtcdStore, Op, TxnResult, WatchEvent
from controller.store.keys import Keys

__all__ = ["KV", "Compare", "EtcdStore", "Keys", "Op", "TxnResult", "WatchEvent"]
