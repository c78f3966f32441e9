"""Lease keepalives over one long-lived LeaseKeepAlive stream per store.

pyetcd's refresh_lease opens a new bidi stream for every renewal: one stream (and a pool
thread) per lease per renewal, which does not scale to thousands of node leases. Here every
keepalive is one request on a shared stream. etcd answers the requests of one stream in
order, so the responses for one lease id come back in the order of its requests: waiters are
matched FIFO per lease id.

A waiter that gave up (timeout, cancellation) stays queued as a tombstone so that the late
response for its request still lines up. When the stream breaks (an error, or it went silent
with requests outstanding: a hung member keeps its TCP connection open), the store moves to
the next endpoint, a new stream is opened on it, and every live waiter's request is sent
again: a keepalive is idempotent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from pyetcd import etcdrpc

from controller.errors import StoreUnavailable
from controller.store._endpoints import HASLEADER, Endpoint, Endpoints, describe

log = logging.getLogger("controller.store.etcd")

MAX_REOPEN_BACKOFF_S = 1.0  # between re-opens when every stream fails at once


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]
    sent_at: float = 0.0
    stream: int = 0  # generation of the stream the request was last sent on
    alive: bool = True


@dataclass
class _Stream:
    generation: int
    endpoint: Endpoint
    requests: queue.SimpleQueue[Any | None] = field(default_factory=queue.SimpleQueue)
    call: Any = None
    opened_at: float = field(default_factory=time.monotonic)
    last_response: float = 0.0  # monotonic time of the last response; 0 = none yet

    def request_iter(self) -> Iterator[Any]:
        while True:
            req = self.requests.get()
            if req is None:
                return
            yield req

    def send(self, lease_id: int) -> None:
        self.requests.put(etcdrpc.LeaseKeepAliveRequest(ID=lease_id))

    def close(self) -> None:
        self.requests.put(None)
        if self.call is not None:
            self.call.cancel()


class LeaseKeepAliver:
    """Sends keepalives on one shared stream; see the module docstring."""

    def __init__(self, endpoints: Endpoints, timeout: float) -> None:
        self._endpoints = endpoints
        self._timeout = timeout
        # With requests outstanding and no response for this long, the stream is stalled
        # and moved: half the deadline leaves the other half for the next member.
        self._stall_after = timeout / 2
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._pending: dict[int, deque[_Waiter]] = {}
        self._generations = itertools.count(1)
        self._backoff = 0.0
        self._closed = False
        self.stream_opens = 0  # how many streams were opened (for tests and metrics)

    @property
    def endpoint(self) -> str:
        """The address of the open stream's member ("" when none is open)."""
        with self._lock:
            return self._stream.endpoint.address if self._stream else ""

    async def keepalive(self, lease_id: int) -> int:
        """Renew lease_id once; its TTL, or 0 when it has expired or does not exist."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, loop.create_future())
        deadline = loop.time() + self._timeout
        with self._lock:
            if self._closed:
                raise StoreUnavailable("etcd store is closed")
            stream = self._ensure_stream_locked()
            self._pending.setdefault(lease_id, deque()).append(waiter)
            self._send_locked(stream, lease_id, waiter)
        try:
            await asyncio.wait({waiter.future}, timeout=self._stall_after)
            if not waiter.future.done():
                self._check_stalled(waiter)
                await asyncio.wait({waiter.future}, timeout=max(0.0, deadline - loop.time()))
            if not waiter.future.done():
                self._check_stalled(waiter)
                raise StoreUnavailable(
                    f"etcd lease keepalive of {lease_id:x} timed out after {self._timeout:.1f}s"
                )
            return waiter.future.result()
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            with self._lock:
                waiter.alive = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
            pending, self._pending = self._pending, {}
        if stream is not None:
            stream.close()
        for waiters in pending.values():
            for w in waiters:
                _settle(w, StoreUnavailable("etcd store is closed"))

    # -- internals (the _locked ones run with self._lock held) ---------------------------

    def _ensure_stream_locked(self) -> _Stream:
        current = self._endpoints.current()
        stream = self._stream
        if stream is not None and stream.endpoint.index != current.index:
            # The store moved on (a KV call found this member dead or hung): follow it now
            # rather than after this stream stalls too.
            self._drop_locked(stream)
            stream = None
        if stream is None:
            stream = self._open_locked(current)
        return stream

    def _open_locked(self, endpoint: Endpoint) -> _Stream:
        stream = _Stream(next(self._generations), endpoint)
        stream.call = endpoint.lease.LeaseKeepAlive(stream.request_iter(), metadata=HASLEADER)
        self._stream = stream
        self.stream_opens += 1
        threading.Thread(
            target=self._read, args=(stream,), name="etcd-keepalive", daemon=True
        ).start()
        for lease_id, waiters in self._pending.items():
            for w in waiters:
                if w.alive:
                    self._send_locked(stream, lease_id, w)
        # Tombstones belong to the old stream: its responses will never come.
        for lease_id in list(self._pending):
            live = deque(w for w in self._pending[lease_id] if w.alive)
            if live:
                self._pending[lease_id] = live
            else:
                del self._pending[lease_id]
        return stream

    def _send_locked(self, stream: _Stream, lease_id: int, waiter: _Waiter) -> None:
        waiter.sent_at = time.monotonic()
        waiter.stream = stream.generation
        stream.send(lease_id)

    def _drop_locked(self, stream: _Stream) -> None:
        if self._stream is stream:
            self._stream = None
        stream.close()

    def _check_stalled(self, waiter: _Waiter) -> None:
        """Move the stream to the next member when it has not answered anything since
        waiter's request was sent (a slow but answering stream is left alone)."""
        with self._lock:
            stream = self._stream
            if (
                self._closed
                or stream is None
                or stream.generation != waiter.stream
                or stream.last_response >= waiter.sent_at
            ):
                return
            self._drop_locked(stream)
            nxt = self._endpoints.advance_from(stream.endpoint, "lease keepalive stalled")
            self._open_locked(nxt)

    def _read(self, stream: _Stream) -> None:
        err: BaseException
        try:
            for resp in stream.call:
                now = time.monotonic()
                with self._lock:
                    if self._stream is not stream:
                        return
                    stream.last_response = now
                    self._backoff = 0.0
                    waiters = self._pending.get(int(resp.ID))
                    if not waiters:
                        continue
                    w = waiters.popleft()
                    if not waiters:
                        del self._pending[int(resp.ID)]
                    if w.alive:
                        _settle(w, max(0, int(resp.TTL)))
            err = StoreUnavailable("etcd closed the lease keepalive stream")
        except grpc.RpcError as rpc_err:
            err = rpc_err
        except Exception as other:  # noqa: BLE001 - any failure ends this stream
            err = other
        self._stream_failed(stream, err)

    def _stream_failed(self, stream: _Stream, err: BaseException) -> None:
        with self._lock:
            if self._stream is not stream or self._closed:
                return  # replaced or closed on purpose
            self._drop_locked(stream)
            nxt = self._endpoints.advance_from(stream.endpoint, describe(err))
            if not any(w.alive for ws in self._pending.values() for w in ws):
                return  # the next keepalive opens a stream
            lived = time.monotonic() - stream.opened_at
            self._backoff = 0.0 if lived > 1.0 else min(
                MAX_REOPEN_BACKOFF_S, max(0.05, self._backoff * 2))
            backoff = self._backoff
        log.info("etcd lease keepalive stream failed (%s); reopening on %s",
                 describe(err), nxt.address)
        if backoff:
            time.sleep(backoff)  # this stream's own reader thread
        with self._lock:
            if self._stream is None and not self._closed:
                self._open_locked(self._endpoints.current())


def _settle(waiter: _Waiter, outcome: int | BaseException) -> None:
    def apply() -> None:
        if waiter.future.done():
            return
        if isinstance(outcome, BaseException):
            waiter.future.set_exception(outcome)
        else:
            waiter.future.set_result(outcome)

    try:
        waiter.loop.call_soon_threadsafe(apply)
    except RuntimeError:  # the waiter's loop is closed: nobody is waiting any more
        pass
