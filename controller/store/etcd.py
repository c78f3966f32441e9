"""The controller's only door to etcd: an asyncio facade over etcd's raw gRPC stubs.

Endpoints and failover: one channel per member; the store uses the FIRST listed member until
a call fails for connectivity reasons (UNAVAILABLE, DEADLINE_EXCEEDED, etcd's "no leader"),
then the next one in list order, wrapping around. Every call carries etcd's require-leader
metadata and a deadline. We do this ourselves because pyetcd's MultiEndpointEtcd3Client
failover does not cover the raw stubs (KV calls stayed on a dead member forever), picks its
first endpoint at random, and blacklists a failed endpoint for 300 s (see _endpoints.py).

What a failure means to the caller (every etcd failure leaves this module as a StoreError):
- StoreFull: etcd raised its NOSPACE alarm and refuses writes until an operator frees space
  (the message says how); Compacted: a read at a revision older than etcd's history.
- Reads and lease revoke/keepalive/time-to-live are idempotent: they are retried on the next
  member within the call's deadline; StoreUnavailable means no member answered in time.
- put, delete, txn and grant_lease are not retried: on a connectivity failure the store
  switches member and raises StoreUnavailable, which means "maybe applied". Callers retry
  with a fresh read: their transactions compare mod revisions, so a write that did land
  makes the retry's compare fail (Conflict) instead of applying twice; a lease granted by a
  call that then failed is simply never used and expires after its TTL.

Unary calls use grpc.aio on the running loop (one channel per member and loop, made at
first use, so the store may be built before the loop runs and used from several loops in
turn); an earlier version ran blocking stubs on a thread pool, which cost about three times
the CPU per call (see _endpoints.py). Lease keepalives share one stream (_keepalive.py) and
watches have a stream each (_watch.py), each read by its own thread.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from pyetcd import etcdrpc

from controller.errors import StoreUnavailable
from controller.store._endpoints import HASLEADER, AioStubs, Endpoints, describe, is_failover
from controller.store._errors import ResponseTooLarge, store_error
from controller.store._group_commit import GroupCommit
from controller.store._keepalive import LeaseKeepAliver
from controller.store._kv import KV, WatchEvent, kv_from_pb, prefix_end
from controller.store._txn import Compare, Op, TxnResult, build_txn
from controller.store._watch import PrefixWatch

__all__ = [
    "KV",
    "Compare",
    "EtcdStore",
    "MemberStatus",
    "Op",
    "Page",
    "TxnResult",
    "WatchEvent",
    "build_txn",
    "parse_endpoint",
]

# An attempt left with less time than this is not worth starting.
MIN_ATTEMPT_S = 0.05


@dataclass(frozen=True)
class Page:
    """One range read: the keys, the revision they were read at, whether more follow."""

    kvs: list[KV]
    revision: int
    more: bool


@dataclass(frozen=True)
class MemberStatus:
    """What one member says of itself (etcd's Maintenance.Status)."""

    address: str
    db_size: int      # bytes of the backend file, free pages included
    revision: int
    leader: int
    member_id: int


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"invalid etcd endpoint {endpoint!r}: expected HOST:PORT")
    return host, int(port)


Rpc = Callable[..., Any]  # a bound stub method: (request, timeout=..., metadata=...)


class EtcdStore:
    """Async key-value operations on etcd. One instance per controller process.

    timeout: the deadline of every KV, txn and lease grant/revoke call, retries included.
    attempt_timeout: the deadline of one attempt of an idempotent call before it moves on
        to the next member (default: half of timeout, leaving room for one retry when a
        member hangs).
    keepalive_timeout: the deadline of one lease keepalive (shorter than the leases' TTL).
    watch_stall_timeout: a watch that receives nothing, progress responses included, for
        this long is reported lost.
    credentials: gRPC channel credentials once etcd uses TLS (None: plaintext).
    """

    MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
    #: unary calls at etcd at once from one store (and loop); the rest wait their turn, and
    #: a call's deadline starts when it is sent. Unbounded, 256 API creates in flight put
    #: 256 transactions at etcd at once on a 2-core machine and some passed their 2 s
    #: deadline (UNAVAILABLE to the user) though etcd was merely busy.
    MAX_IN_FLIGHT = 32

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 2.0,
        *,
        attempt_timeout: float | None = None,
        keepalive_timeout: float = 1.0,
        watch_stall_timeout: float = 3.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        addresses = ["{}:{}".format(*parse_endpoint(e)) for e in endpoints]
        self._endpoints = Endpoints(addresses, credentials)
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout if attempt_timeout is not None else timeout / 2
        self._watch_stall_timeout = watch_stall_timeout
        self._keepalives = LeaseKeepAliver(self._endpoints, keepalive_timeout)
        self._watches: list[PrefixWatch] = []
        #: Called with (seconds, succeeded) after each transaction etcd answered (metrics).
        self.txn_observer: Callable[[float, bool], None] | None = None
        #: Called with the number of transactions each request to etcd carried (metrics).
        self.batch_observer: Callable[[int], None] | None = None
        self._in_flight: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
        self._groups: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, GroupCommit] = weakref.WeakKeyDictionary()

    @property
    def current_endpoint(self) -> str:
        """The member calls go to now (HOST:PORT)."""
        return self._endpoints.current().address

    @property
    def keepalive_stream_opens(self) -> int:
        """How many LeaseKeepAlive streams this store has opened so far."""
        return self._keepalives.stream_opens

    # -- calls ---------------------------------------------------------------------------

    async def _call(self, pick: Callable[[AioStubs], Rpc], request: Any, idempotent: bool,
                    timeout: float = 0.0) -> Any:
        """One call, on the current member, then (idempotent calls only) on the next ones
        while the deadline allows, each member at most once; at most MAX_IN_FLIGHT at
        once (the deadline counts from when this one's turn came)."""
        loop = asyncio.get_running_loop()
        limit = self._in_flight.get(loop)
        if limit is None:
            limit = self._in_flight[loop] = asyncio.Semaphore(self.MAX_IN_FLIGHT)
        async with limit:
            return await self._attempts(pick, request, idempotent, timeout)

    async def _attempts(self, pick: Callable[[AioStubs], Rpc], request: Any,
                        idempotent: bool, timeout: float) -> Any:
        deadline = time.monotonic() + (timeout or self._timeout)
        tries = len(self._endpoints) if idempotent else 1
        for attempt in range(1, tries + 1):
            ep = self._endpoints.current()
            remaining = deadline - time.monotonic()
            last = attempt == tries
            budget = remaining if last else min(remaining, self._attempt_timeout)
            try:
                return await pick(ep.aio())(request, timeout=budget, metadata=HASLEADER)
            except grpc.RpcError as err:
                if not is_failover(err):
                    raise store_error(ep.address, err) from err
                self._endpoints.advance_from(ep, describe(err))
                if last or deadline - time.monotonic() < MIN_ATTEMPT_S:
                    raise StoreUnavailable(f"etcd {ep.address}: {describe(err)}") from err
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reads ---------------------------------------------------------------------------

    async def _range(self, request: Any) -> Any:
        return await self._call(_kv_rpc("Range"), request, idempotent=True)

    async def get(self, key: str) -> KV | None:
        resp = await self._range(etcdrpc.RangeRequest(key=key.encode()))
        return kv_from_pb(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under prefix, sorted by key, and the store revision they were read at
        (in pages: see get_prefix_paged)."""
        return await self.get_prefix_paged(prefix)

    async def get_prefix_paged(
        self, prefix: str, revision: int = 0, page: int = 1000
    ) -> tuple[list[KV], int]:
        """Every key under prefix, in pages of `page` keys all read at one revision
        (`revision`, or the first page's): a single range of a large prefix would exceed
        gRPC's 4 MiB limit. Returns the keys and the revision they were read at. Raises
        Compacted when `revision` is older than etcd's compacted revision."""
        out: list[KV] = []
        after: str | None = None
        while True:
            got = await self.range_page(prefix, after, revision, page)
            out.extend(got.kvs)
            revision = got.revision
            if not got.more:
                return out, revision
            after = got.kvs[-1].key

    async def range_page(self, prefix: str, after: str | None = None, revision: int = 0,
                         limit: int = 1000, *, keys_only: bool = False,
                         descending: bool = False) -> Page:
        """At most `limit` keys under prefix, in key order (or reversed), starting after the
        full key `after` (before it when descending; None: from the start), read at
        `revision` (0: now). Raises Compacted when `revision` was compacted away. An answer
        too large for the channel (large values) is asked again for half as many keys."""
        start, end = prefix.encode(), prefix_end(prefix)
        if after is not None:
            if descending:
                end = after.encode()
            else:
                start = after.encode() + b"\0"
        req = etcdrpc.RangeRequest(
            key=start, range_end=end, limit=limit, revision=revision, keys_only=keys_only)
        if descending:
            req.sort_order = etcdrpc.RangeRequest.DESCEND
            req.sort_target = etcdrpc.RangeRequest.KEY
        return await self._range_pieces(req)

    async def _range_pieces(self, req: Any) -> Page:
        """One limited range; asked again for half as many keys while the answer is too
        large for the channel."""
        while True:
            try:
                resp = await self._range(req)
                break
            except ResponseTooLarge:
                if req.limit == 1:
                    raise
                req.limit = max(1, req.limit // 2)
        kvs = [kv_from_pb(kv) for kv in resp.kvs]
        return Page(kvs, req.revision or int(resp.header.revision),
                    bool(resp.more) and bool(kvs))

    async def range_keys(self, first: str, last: str, revision: int, limit: int = 1000
                         ) -> Page:
        """At most `limit` keys from `first` to `last` (both included) at `revision`."""
        return await self._range_pieces(etcdrpc.RangeRequest(
            key=first.encode(), range_end=last.encode() + b"\0", limit=limit,
            revision=revision))

    async def get_many(self, keys: Sequence[str]) -> list[KV | None]:
        """Several keys read at one revision in one round trip (a read-only transaction),
        in the order given; None for a key that is absent."""
        if len(keys) > self.MAX_TXN_OPS:
            raise ValueError(f"{len(keys)} keys in one read; etcd allows {self.MAX_TXN_OPS}")
        req = etcdrpc.TxnRequest(success=[
            etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=k.encode())) for k in keys])
        resp = await self._call(_kv_rpc("Txn"), req, idempotent=True)
        return [kv_from_pb(r.response_range.kvs[0]) if r.response_range.kvs else None
                for r in resp.responses]

    async def count_prefix(self, prefix: str) -> int:
        """How many keys are under prefix (etcd counts; no key is sent)."""
        resp = await self._range(etcdrpc.RangeRequest(
            key=prefix.encode(), range_end=prefix_end(prefix), count_only=True))
        return int(resp.count)

    async def revision(self) -> int:
        """The store's current revision (one cheap read)."""
        resp = await self._range(etcdrpc.RangeRequest(key=b"\0", count_only=True))
        return int(resp.header.revision)

    # -- writes (not retried: StoreUnavailable means "maybe applied") ---------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Put one key (a transaction without compares, so that lone puts such as audit
        records share proposals with whatever else is being written)."""
        return (await self.txn([], [Op.put(key, value, lease)])).revision

    async def delete(self, key: str) -> bool:
        req = etcdrpc.DeleteRangeRequest(key=key.encode())
        resp = await self._call(_kv_rpc("DeleteRange"), req, idempotent=False)
        return bool(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        req = etcdrpc.DeleteRangeRequest(key=prefix.encode(), range_end=prefix_end(prefix))
        resp = await self._call(_kv_rpc("DeleteRange"), req, idempotent=False)
        return int(resp.deleted)

    async def delete_prefix_through(self, prefix: str, last: str) -> int:
        """Delete the keys under prefix up to and including the full key `last`."""
        req = etcdrpc.DeleteRangeRequest(key=prefix.encode(), range_end=last.encode() + b"\0")
        resp = await self._call(_kv_rpc("DeleteRange"), req, idempotent=False)
        return int(resp.deleted)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply ops atomically if every compare holds; never raises Conflict itself."""
        if len(ops) > self.MAX_TXN_OPS:
            raise ValueError(f"transaction has {len(ops)} ops; etcd allows {self.MAX_TXN_OPS}")
        return await self.group_commit().txn(compares, ops)

    def group_commit(self) -> GroupCommit:
        """The running loop's group commit (made at first use): transactions that arrive
        while etcd is busy are sent together (_group_commit.py)."""
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = GroupCommit(self._send_txn, self._txn_done,
                                                     self._batch_done)
        return group

    async def _send_txn(self, request: Any) -> Any:
        return await self._call(_kv_rpc("Txn"), request, idempotent=False)

    def _txn_done(self, seconds: float, succeeded: bool) -> None:
        if self.txn_observer is not None:
            self.txn_observer(seconds, succeeded)

    def _batch_done(self, carried: int) -> None:
        if self.batch_observer is not None:
            self.batch_observer(carried)

    # -- maintenance ---------------------------------------------------------------------

    async def compact(self, revision: int, physical: bool = False) -> None:
        """Drop the history before `revision` (keys' current values are kept). physical:
        return only once the backend has removed it (else etcd does it in the background).
        Raises Compacted when etcd has already compacted at or past `revision`."""
        req = etcdrpc.CompactionRequest(revision=revision, physical=physical)
        await self._call(_kv_rpc("Compact"), req, idempotent=True,
                         timeout=self._timeout * (15 if physical else 1))

    async def status(self) -> MemberStatus:
        """The current member's status (database size, revision)."""
        ep = self._endpoints.current()
        resp = await self._call(_maintenance_rpc("Status"), etcdrpc.StatusRequest(),
                                idempotent=False)
        return MemberStatus(ep.address, int(resp.dbSize), int(resp.header.revision),
                            int(resp.leader), int(resp.header.member_id))

    async def defragment(self, timeout: float = 60.0) -> None:
        """Defragment the current member: give the space that compaction freed back to the
        file system. It blocks that member's reads and writes while it runs (seconds on a
        large database), so the controller never does it by itself: operators (and tests)
        do, one member at a time (docs/operations.md)."""
        await self._call(_maintenance_rpc("Defragment"), etcdrpc.DefragmentRequest(),
                         idempotent=False, timeout=timeout)

    async def alarms(self) -> list[str]:
        """The alarms raised in the cluster, e.g. ["NOSPACE"]."""
        resp = await self._call(_maintenance_rpc("Alarm"), etcdrpc.AlarmRequest(
            action=etcdrpc.AlarmRequest.GET), idempotent=True)
        return sorted({etcdrpc.AlarmType.Name(a.alarm) for a in resp.alarms})

    async def disarm_alarms(self) -> None:
        """Disarm every raised alarm (after space was freed)."""
        resp = await self._call(_maintenance_rpc("Alarm"), etcdrpc.AlarmRequest(
            action=etcdrpc.AlarmRequest.GET), idempotent=True)
        for a in resp.alarms:
            await self._call(_maintenance_rpc("Alarm"), etcdrpc.AlarmRequest(
                action=etcdrpc.AlarmRequest.DEACTIVATE, memberID=a.memberID, alarm=a.alarm),
                idempotent=True)

    # -- leases --------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        req = etcdrpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._call(_lease_rpc("LeaseGrant"), req, idempotent=False)
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its TTL, or 0 when it has already expired.
        Raises StoreUnavailable when no member answered within keepalive_timeout."""
        return await self._keepalives.keepalive(lease_id)

    async def lease_ttl(self, lease_id: int) -> int:
        """The lease's remaining TTL in seconds, or 0 when it has expired (or never was)."""
        req = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = await self._call(_lease_rpc("LeaseTimeToLive"), req, idempotent=True)
        return max(0, int(resp.TTL))

    async def lease_times(self, lease_id: int) -> tuple[int, int]:
        """(remaining TTL, granted TTL) in seconds; remaining 0 when it has expired."""
        req = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = await self._call(_lease_rpc("LeaseTimeToLive"), req, idempotent=True)
        return max(0, int(resp.TTL)), max(0, int(resp.grantedTTL))

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call(_revoke_rpc, etcdrpc.LeaseRevokeRequest(ID=lease_id), idempotent=True)

    # -- watches -------------------------------------------------------------------------

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_events: Callable[[list[WatchEvent], int], None],
        on_lost: Callable[[Exception], None],
        end: str | None = None,
    ) -> Callable[[], None]:
        """Deliver events under prefix (or, given `end`, of keys from prefix up to end)
        from start_revision on the running loop.

        on_events(events, revision) runs in the loop, in order; on_lost(error) runs once if
        the watch breaks (member dead, hung or leaderless, revision compacted, cancelled by
        etcd): the caller re-reads and watches again (the store has then moved to the next
        member if this one was at fault). Returns a function that cancels the watch; no
        callback runs after it was called.
        """
        loop = asyncio.get_running_loop()
        self._watches = [w for w in self._watches if not w.finished]
        watch = PrefixWatch(self._endpoints, prefix, start_revision, loop, on_events, on_lost,
                            self._watch_stall_timeout, end)
        self._watches.append(watch)
        watch.start()
        return watch.cancel

    def close(self) -> None:
        for w in self._watches:
            w.cancel()
        self._keepalives.close()
        self._endpoints.close()


def _kv_rpc(name: str) -> Callable[[AioStubs], Rpc]:
    def pick(stubs: AioStubs) -> Rpc:
        rpc: Rpc = getattr(stubs.kv, name)
        return rpc

    return pick


def _maintenance_rpc(name: str) -> Callable[[AioStubs], Rpc]:
    def pick(stubs: AioStubs) -> Rpc:
        rpc: Rpc = getattr(stubs.maintenance, name)
        return rpc

    return pick


def _lease_rpc(name: str) -> Callable[[AioStubs], Rpc]:
    def pick(stubs: AioStubs) -> Rpc:
        rpc: Rpc = getattr(stubs.lease, name)
        return rpc

    return pick


def _revoke_rpc(stubs: AioStubs) -> Rpc:
    """LeaseRevoke that treats an unknown lease (expired, or revoked by an earlier attempt
    whose answer was lost) as revoked."""

    async def call(request: Any, **kwargs: Any) -> Any:
        try:
            return await stubs.lease.LeaseRevoke(request, **kwargs)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    return call
