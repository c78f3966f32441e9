"""Events: short-lived records of what happened and why, kept in etcd under a lease."""

from __future__ import annotations

import logging
import os
import time

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import types_pb2 as pb

from controller.errors import StoreError
from controller.store.etcd import EtcdStore
from controller.store.keys import Keys
from controller.store.objects import decode

log = logging.getLogger(__name__)

EVENT_TTL_S = 3600
LEASE_ROTATE_S = 600  # events live between EVENT_TTL_S - LEASE_ROTATE_S and EVENT_TTL_S


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class EventRecorder:
    """Writes events; a failure to record one is logged, never raised to the caller."""

    def __init__(self, etcd: EtcdStore, keys: Keys, source: str) -> None:
        self._etcd = etcd
        self._keys = keys
        self._source = source
        self._lease = 0
        self._lease_at = 0.0

    async def lease_id(self) -> int:
        if not self._lease or time.monotonic() - self._lease_at > LEASE_ROTATE_S:
            self._lease = await self._etcd.grant_lease(EVENT_TTL_S)
            self._lease_at = time.monotonic()
        return self._lease

    def build(
        self, kind: str, obj: str, reason: str, message: str, warning: bool = False
    ) -> tuple[str, bytes]:
        """The key and value of an event, for writing inside a caller's transaction."""
        event_id = f"{time.time_ns():020d}-{os.urandom(3).hex()}"
        ev = pb.Event(
            id=event_id,
            time=now_ts(),
            kind=kind,
            object=obj,
            type="Warning" if warning else "Normal",
            reason=reason,
            message=message,
            source=self._source,
        )
        return self._keys.event(event_id), ev.SerializeToString()

    async def record(
        self, kind: str, obj: str, reason: str, message: str, warning: bool = False
    ) -> None:
        key, value = self.build(kind, obj, reason, message, warning)
        log.info("event %s %s/%s: %s", reason, kind, obj, message)
        try:
            await self._etcd.put(key, value, lease=await self.lease_id())
        except StoreError:
            log.warning("could not record event %s %s: %s", reason, obj, message)


async def list_events(etcd: EtcdStore, keys: Keys, obj: str = "", limit: int = 0) -> list[pb.Event]:
    kvs, _ = await etcd.get_prefix(keys.events)
    events = [decode(pb.Event, kv.value) for kv in kvs]
    if obj:
        events = [e for e in events if e.object == obj]
    if limit:
        events = events[-limit:]
    return events
