"""Events in etcd: short-lived records of what happened and why, under a rotating lease.

Bounded twice: by age (the lease: EVENT_TTL_S at most) and by count (the leader's trim()
deletes the oldest beyond --max-events, so a burst cannot fill etcd within the hour). Event
ids begin with the wall-clock time in nanoseconds, so key order is time order.

Events are written inside the transaction of the change they describe (ops()), or alone
(record()). A failure to record a lone event is logged, never raised: an event must not fail
the operation it reports on.

They live outside the range the replicas watch (keys.py, EVENTS_DIR). Events written by an
older release under "<prefix>/events/" are moved there by the leader (move_legacy()).
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
from controller.store.etcd import KV, EtcdStore, Op, WatchEvent
from controller.store.keys import Keys
from controller.store.records import decode
from controller.store.scan import BATCH, ScanPage, scan

log = logging.getLogger(__name__)

EVENT_TTL_S = 3600
LEASE_ROTATE_S = 600  # events live between EVENT_TTL_S - LEASE_ROTATE_S and EVENT_TTL_S
DEFAULT_MAX_EVENTS = 10000
LEGACY_PAGE = 50   # events moved per transaction (a put and a delete each)


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

    async def page(self, obj: str = "", limit: int = 0, *, after: str = "",
                   revision: int = 0, want: int) -> ScanPage[pb.Event]:
        """One page of events, oldest first: about `obj` only (if given), at most `want`,
        after the event id `after`, at `revision` (0: now). On the first page (no `after`),
        `limit` starts the listing at the limit-th newest event (so all pages together
        hold the newest `limit`)."""

        def pick(kv: KV) -> pb.Event | None:
            ev = decode(pb.Event, kv.value)
            return ev if not obj or ev.object == obj else None

        if limit and not after:
            after, revision = await self._start_of_newest(obj, limit, revision)
        return await scan(self._etcd, self._keys.events, after=after, revision=revision,
                          want=want, pick=pick)

    async def _start_of_newest(self, obj: str, limit: int, revision: int) -> tuple[str, int]:
        """The id just before the limit-th newest event (about obj): where a listing of the
        newest `limit` starts ("" = from the oldest); and the revision read at."""
        prefix = self._keys.events
        cursor: str | None = None
        found = 0
        while True:
            got = await self._etcd.range_page(prefix, cursor, revision, BATCH,
                                              keys_only=not obj, descending=True)
            revision = got.revision
            for kv in got.kvs:
                if found >= limit:
                    return kv.key[len(prefix):], revision
                if not obj or decode(pb.Event, kv.value).object == obj:
                    found += 1
            if not got.more:
                return "", revision
            cursor = got.kvs[-1].key

    async def move_legacy(self) -> int:
        """Move events an older release wrote under the watched range to where events live
        now, oldest first, keeping their ids (so their order) and putting them on this
        replica's event lease (they may outlive their hour by up to one more). Returns how
        many moved. Each page is one transaction: a put of the new key and a delete of the
        old one per event, so none is lost or doubled."""
        old, moved = self._keys.legacy_events, 0
        while True:
            got = await self._etcd.range_page(old, limit=LEGACY_PAGE)
            if not got.kvs:
                return moved
            lease = await self.lease_id()
            ops: list[Op] = []
            for kv in got.kvs:
                ops.append(Op.put(self._keys.events + kv.key[len(old):], kv.value, lease))
                ops.append(Op.delete(kv.key))
            await self._etcd.txn([], ops)
            moved += len(got.kvs)
            log.info("moved %d events out of the watched range", len(got.kvs))

    async def trim(self, keep: int) -> int:
        """Delete the oldest events beyond the newest `keep`; how many went."""
        prefix = self._keys.events
        excess = await self._etcd.count_prefix(prefix) - keep
        if excess <= 0:
            return 0
        cursor: str | None = None
        revision = seen = 0
        while True:
            got = await self._etcd.range_page(prefix, cursor, revision,
                                              min(BATCH, excess - seen), keys_only=True)
            if not got.kvs:
                return 0
            revision = got.revision
            seen += len(got.kvs)
            cursor = got.kvs[-1].key
            if seen >= excess or not got.more:
                break
        deleted = await self._etcd.delete_prefix_through(prefix, cursor)
        log.info("trimmed %d events beyond the newest %d", deleted, keep)
        return deleted

    def watch(self, revision: int, on_event: Callable[[pb.Event], None],
              on_lost: Callable[[Exception], None]) -> Callable[[], None]:
        """Deliver events written after `revision`; returns a cancel function."""

        def on_events(events: list[WatchEvent], _: int) -> None:
            for we in events:
                if not we.deleted:
                    on_event(decode(pb.Event, we.kv.value))

        return self._etcd.watch_prefix(self._keys.events, revision + 1, on_events, on_lost)
