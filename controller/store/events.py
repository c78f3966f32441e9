"""Events in etcd: short-lived records of what happened and why, under a rotating lease.

Events are written inside the transaction of the change they describe (ops()), or alone
(record()). A failure to record a lone event is logged, never raised: an event must not fail
the operation it reports on.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import types_pb2 as pb

from controller.errors import StoreError
from controller.store.etcd import EtcdStore, Op, WatchEvent
from controller.store.keys import Keys
from controller.store.records import decode

log = logging.getLogger(__name__)

EVENT_TTL_S = 3600
LEASE_ROTATE_S = 600  # events live between EVENT_TTL_S - LEASE_ROTATE_S and EVENT_TTL_S
LIST_PAGE = 1000


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class EventStore:
    def __init__(self, etcd: EtcdStore, keys: Keys, source: str) -> None:
        self._etcd = etcd
        self._keys = keys
        self.source = source
        self._lease = 0
        self._lease_at = 0.0
        # Ids: wall-clock ns + a per-process random tag + a counter: sortable by time,
        # unique without a syscall per event (os.urandom per event was a top cost when
        # binding 100k partitions).
        self._tag = os.urandom(3).hex()
        self._seq = itertools.count()

    async def lease_id(self) -> int:
        if not self._lease or time.monotonic() - self._lease_at > LEASE_ROTATE_S:
            self._lease = await self._etcd.grant_lease(EVENT_TTL_S)
            self._lease_at = time.monotonic()
        return self._lease

    def build(self, kind: str, obj: str, reason: str, message: str, warning: bool = False,
              now: Timestamp | None = None, source: str = "") -> tuple[str, bytes]:
        """The key and value of one event."""
        event_id = f"{time.time_ns():020d}-{self._tag}{next(self._seq) % 1000000:06d}"
        ev = pb.Event(id=event_id, time=now or now_ts(), kind=kind, object=obj,
                      type="Warning" if warning else "Normal", reason=reason,
                      message=message, source=source or self.source)
        return self._keys.event(event_id), ev.SerializeToString()

    async def ops(self, kind: str, obj: str,
                  notes: Iterable[tuple[str, str, bool]]) -> list[Op]:
        """Puts of events (reason, message, warning) to add to a transaction."""
        notes = list(notes)
        if not notes:
            return []
        lease = await self.lease_id()
        now = now_ts()
        out = []
        for reason, message, warning in notes:
            key, value = self.build(kind, obj, reason, message, warning, now)
            out.append(Op.put(key, value, lease))
            log.info("event %s %s/%s: %s", reason, kind, obj, message)
        return out

    async def record(self, kind: str, obj: str, reason: str, message: str,
                     warning: bool = False, source: str = "") -> None:
        log.info("event %s %s/%s: %s", reason, kind, obj, message)
        try:
            key, value = self.build(kind, obj, reason, message, warning, source=source)
            await self._etcd.put(key, value, lease=await self.lease_id())
        except StoreError:
            log.warning("could not record event %s %s: %s", reason, obj, message)

    async def list(self, obj: str = "", limit: int = 0) -> tuple[list[pb.Event], int]:
        """Events (oldest first), optionally about one object / the newest `limit`; and the
        revision they were read at."""
        kvs, revision = await self._etcd.get_prefix_paged(self._keys.events, page=LIST_PAGE)
        events = [decode(pb.Event, kv.value) for kv in kvs]
        if obj:
            events = [e for e in events if e.object == obj]
        if limit:
            events = events[-limit:]
        return events, revision


    def watch(self, revision: int, on_event: Callable[[pb.Event], None],
              on_lost: Callable[[Exception], None]) -> Callable[[], None]:
        """Deliver events written after `revision`; returns a cancel function."""

        def on_events(events: list[WatchEvent], _: int) -> None:
            for we in events:
                if not we.deleted:
                    on_event(decode(pb.Event, we.kv.value))

        return self._etcd.watch_prefix(self._keys.events, revision + 1, on_events, on_lost)
