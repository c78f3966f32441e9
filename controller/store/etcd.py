"""An asyncio facade over etcd-sdk-python (python-etcd3's API, blocking).

Why a thread pool and not an asyncio etcd client: etcd-sdk-python is the maintained
successor of python-etcd3, works with protobuf 7, and is what the project already depends
on; every call here is short (a range, a put, a transaction), so a bounded pool of threads
keeps the event loop free without a second etcd client to maintain. Watches run on the
client's own watcher thread and hand their events to the loop.

Every etcd failure leaves this module as a StoreError (Conflict or StoreUnavailable).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc

from controller.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KV


@dataclass(frozen=True)
class Compare:
    """A transaction guard: the key's mod revision equals `mod_revision` (0 = key absent)."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Op:
    """A transaction operation: put `value` (with an optional lease), or delete when None."""

    key: str
    value: bytes | None
    lease: int = 0

    @staticmethod
    def put(key: str, value: bytes, lease: int = 0) -> Op:
        return Op(key, value, lease)

    @staticmethod
    def delete(key: str) -> Op:
        return Op(key, None)


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


def _kv(raw: Any) -> KV:
    return KV(
        key=raw.key.decode(),
        value=bytes(raw.value),
        mod_revision=int(raw.mod_revision),
        create_revision=int(raw.create_revision),
        lease=int(raw.lease),
    )


def _prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"invalid etcd endpoint {endpoint!r}: expected HOST:PORT")
    return host, int(port)


class EtcdStore:
    """Async key-value operations on etcd. One instance per controller process."""

    MAX_TXN_OPS = 128  # etcd's default --max-txn-ops

    def __init__(self, endpoints: Sequence[str], pool_size: int = 8, timeout: float = 5.0):
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        eps = [pyetcd.Endpoint(*parse_endpoint(e), secure=False) for e in endpoints]
        self._client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=eps, timeout=timeout, failover=True
        )
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="etcd")
        self._watches: list[_PrefixWatch] = []

    async def _call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _guard(fn))

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        def run() -> KV | None:
            req = etcdrpc.RangeRequest(key=key.encode())
            resp = self._client.kvstub.Range(req, self._client.timeout)
            return _kv(resp.kvs[0]) if resp.kvs else None

        return await self._call(run)

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under prefix, sorted by key, and the store revision they were read at."""

        def run() -> tuple[list[KV], int]:
            req = etcdrpc.RangeRequest(key=prefix.encode(), range_end=_prefix_end(prefix))
            resp = self._client.kvstub.Range(req, self._client.timeout)
            return [_kv(kv) for kv in resp.kvs], int(resp.header.revision)

        return await self._call(run)

    async def get_prefix_paged(
        self, prefix: str, revision: int = 0, page: int = 1000
    ) -> tuple[list[KV], int]:
        """Like get_prefix, in pages of `page` keys all read at one revision (`revision`, or
        the first page's): a single range of a large prefix would exceed gRPC's 4 MiB limit.
        Returns the keys and the revision they were read at."""
        end = _prefix_end(prefix)

        def page_at(first: bytes, at: int) -> tuple[list[KV], int, bytes]:
            req = etcdrpc.RangeRequest(key=first, range_end=end, limit=page, revision=at)
            resp = self._client.kvstub.Range(req, self._client.timeout)
            more = bool(resp.more) and bool(resp.kvs)
            nxt = (bytes(resp.kvs[-1].key) + b"\0") if more else b""
            return [_kv(kv) for kv in resp.kvs], at or int(resp.header.revision), nxt

        start = prefix.encode()
        out: list[KV] = []
        while start:
            kvs, revision, start = await self._call(functools.partial(page_at, start, revision))
            out.extend(kvs)
        return out, revision

    # -- writes --------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        def run() -> int:
            req = etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease)
            return int(self._client.kvstub.Put(req, self._client.timeout).header.revision)

        return await self._call(run)

    async def delete(self, key: str) -> bool:
        def run() -> bool:
            req = etcdrpc.DeleteRangeRequest(key=key.encode())
            return bool(self._client.kvstub.DeleteRange(req, self._client.timeout).deleted)

        return await self._call(run)

    async def delete_prefix(self, prefix: str) -> int:
        def run() -> int:
            req = etcdrpc.DeleteRangeRequest(key=prefix.encode(), range_end=_prefix_end(prefix))
            return int(self._client.kvstub.DeleteRange(req, self._client.timeout).deleted)

        return await self._call(run)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply ops atomically if every compare holds; never raises Conflict itself."""
        if len(ops) > self.MAX_TXN_OPS:
            raise ValueError(f"transaction has {len(ops)} ops; etcd allows {self.MAX_TXN_OPS}")
        request = build_txn(compares, ops)

        def run() -> TxnResult:
            resp = self._client.kvstub.Txn(request, self._client.timeout)
            return TxnResult(bool(resp.succeeded), int(resp.header.revision))

        return await self._call(run)

    # -- leases --------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        def run() -> int:
            resp = self._client.leasestub.LeaseGrant(
                etcdrpc.LeaseGrantRequest(TTL=ttl), self._client.timeout
            )
            return int(resp.ID)

        return await self._call(run)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its TTL, or 0 when it has already expired."""

        def run() -> int:
            for resp in self._client.refresh_lease(lease_id):
                return int(resp.TTL)
            return 0

        return await self._call(run)

    async def revoke_lease(self, lease_id: int) -> None:
        def run() -> None:
            try:
                self._client.revoke_lease(lease_id)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        await self._call(run)

    # -- watches -------------------------------------------------------------------------

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_events: Callable[[list[WatchEvent], int], None],
        on_lost: Callable[[Exception], None],
    ) -> Callable[[], None]:
        """Deliver events under prefix from start_revision on the running loop.

        on_events(events, revision) runs in the loop; on_lost(error) runs once if the watch
        breaks (etcd gone, revision compacted): the caller re-reads and watches again.
        Returns a function that cancels the watch.
        """
        loop = asyncio.get_running_loop()
        watch = _PrefixWatch(self._client, prefix, start_revision, loop, on_events, on_lost)
        self._watches.append(watch)
        self._pool.submit(watch.start)
        return watch.cancel

    def close(self) -> None:
        for w in self._watches:
            w.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken channel must not fail shutdown
            log.debug("closing etcd client failed", exc_info=True)


def build_txn(compares: Sequence[Compare], ops: Sequence[Op]) -> Any:
    cmp = [
        etcdrpc.Compare(
            key=c.key.encode(),
            result=etcdrpc.Compare.EQUAL,
            target=etcdrpc.Compare.MOD,
            mod_revision=c.mod_revision,
        )
        for c in compares
    ]
    success = []
    for op in ops:
        if op.value is None:
            success.append(
                etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=op.key.encode()))
            )
        else:
            success.append(
                etcdrpc.RequestOp(
                    request_put=etcdrpc.PutRequest(
                        key=op.key.encode(), value=op.value, lease=op.lease
                    )
                )
            )
    return etcdrpc.TxnRequest(compare=cmp, success=success, failure=[])


def _guard(fn: Callable[[], T]) -> Callable[[], T]:
    def run() -> T:
        try:
            return fn()
        except (grpc.RpcError, etcd_exc.Etcd3Exception) as err:
            raise StoreUnavailable(f"etcd: {_describe(err)}") from err

    return run


def _describe(err: Exception) -> str:
    if isinstance(err, grpc.RpcError):
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else str(err)
        return f"{code.name if code else 'error'}: {details}"
    return type(err).__name__ + (f": {err}" if str(err) else "")


class _PrefixWatch:
    """One prefix watch on the client's watcher thread, forwarding to an event loop."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        start_revision: int,
        loop: asyncio.AbstractEventLoop,
        on_events: Callable[[list[WatchEvent], int], None],
        on_lost: Callable[[Exception], None],
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._start = start_revision
        self._loop = loop
        self._on_events = on_events
        self._on_lost = on_lost
        self._watch_id: int | None = None
        self._done = threading.Event()

    def start(self) -> None:
        try:
            self._watch_id = self._client.add_watch_callback(
                self._prefix.encode(),
                self._callback,
                range_end=_prefix_end(self._prefix),
                start_revision=self._start,
            )
        except Exception as err:  # noqa: BLE001 - any failure means the watch is lost
            self._lost(err)

    def _callback(self, response: Any) -> None:
        if self._done.is_set():
            return
        if isinstance(response, Exception):
            self._lost(response)
            return
        events = [
            WatchEvent(deleted=type(ev).__name__ == "DeleteEvent", kv=_kv(ev._event.kv))
            for ev in response.events
        ]
        revision = int(response.header.revision)
        if events:
            self._loop.call_soon_threadsafe(self._on_events, events, revision)

    def _lost(self, err: Exception) -> None:
        if self._done.is_set():
            return
        self._done.set()
        try:
            self._loop.call_soon_threadsafe(self._on_lost, err)
        except RuntimeError:  # loop closed during shutdown
            pass

    def cancel(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        if self._watch_id is not None:
            try:
                self._client.cancel_watch(self._watch_id)
            except Exception:  # noqa: BLE001 - cancelling on a dead connection is moot
                log.debug("cancel watch failed", exc_info=True)
