"""Prefix watches on etcd's raw Watch stream, each reported lost exactly once when it breaks.

Not pyetcd's Watcher: it has no stall detection, no require-leader metadata, follows its own
endpoint choice, and its generated messages predate etcd 3.4's `fragment` fields. So each
watch is its own bidi Watch stream on the store's current endpoint, sent with `hasleader`
(a member that loses its leader cancels the stream, instead of silently delivering
nothing), with progress_notify on and a progress request every stall_timeout/3: a stream
that leaves a progress request unanswered (no response at all) for stall_timeout is declared
lost (a hung member keeps its TCP connection open and would otherwise never fail).

Messages: the three whose pyetcd definitions lack fields are re-declared here, identical on
the wire to etcd's rpc.proto (WatchCreateRequest.watch_id = 7 and fragment = 8,
WatchResponse.fragment = 7); the others are pyetcd's.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from pyetcd.etcdrpc import kv_pb2, rpc_pb2

from controller.errors import StoreUnavailable, WatchCompacted
from controller.store._endpoints import (
    HASLEADER,
    NO_LEADER_TEXTS,
    Endpoint,
    Endpoints,
    describe,
)
from controller.store._kv import WatchEvent, kv_from_pb, prefix_end

log = logging.getLogger("controller.store.etcd")

_PACKAGE = "viridian.etcdwatch"
_REDECLARED = ("WatchRequest", "WatchCreateRequest", "WatchResponse")


def _build_messages() -> dict[str, Any]:
    pool = descriptor_pool.Default()
    name = "viridian_etcd_watch.proto"
    try:
        pool.FindFileByName(name)
    except KeyError:
        etcd = descriptor_pb2.FileDescriptorProto()
        rpc_pb2.DESCRIPTOR.CopyToProto(etcd)
        fp = descriptor_pb2.FileDescriptorProto(
            name=name,
            package=_PACKAGE,
            syntax="proto3",
            dependency=[rpc_pb2.DESCRIPTOR.name, kv_pb2.DESCRIPTOR.name],
        )
        for msg in etcd.message_type:
            if msg.name not in _REDECLARED:
                continue
            copy = fp.message_type.add()
            copy.CopyFrom(msg)
            for f in copy.field:
                short = f.type_name.removeprefix(".etcdserverpb.")
                if short.split(".")[0] in _REDECLARED:
                    f.type_name = f".{_PACKAGE}.{short}"
            optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            if msg.name == "WatchCreateRequest":
                copy.field.add(name="watch_id", number=7, label=optional,
                               type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64)
                copy.field.add(name="fragment", number=8, label=optional,
                               type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL)
            elif msg.name == "WatchResponse":
                copy.field.add(name="fragment", number=7, label=optional,
                               type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL)
        pool.Add(fp)
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{n}"))
        for n in _REDECLARED
    }


_MESSAGES = _build_messages()
WatchRequest: Any = _MESSAGES["WatchRequest"]
WatchCreateRequest: Any = _MESSAGES["WatchCreateRequest"]
WatchResponse: Any = _MESSAGES["WatchResponse"]
_DELETE = kv_pb2.Event.DELETE


def watch_method(channel: grpc.Channel) -> Any:
    """The raw Watch bidi method on channel, with the messages above."""
    return channel.stream_stream(
        "/etcdserverpb.Watch/Watch",
        request_serializer=WatchRequest.SerializeToString,
        response_deserializer=WatchResponse.FromString,
    )


class PrefixWatch:
    """One prefix watch (or, given `end`, of the keys from `prefix` up to `end`): a stream
    read by its own thread, callbacks run on `loop`."""

    def __init__(
        self,
        endpoints: Endpoints,
        prefix: str,
        start_revision: int,
        loop: asyncio.AbstractEventLoop,
        on_events: Callable[[list[WatchEvent], int], None],
        on_lost: Callable[[Exception], None],
        stall_timeout: float,
        end: str | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._prefix = prefix
        self._end = prefix_end(prefix) if end is None else end.encode()
        self._start = start_revision
        self._loop = loop
        self._on_events = on_events
        self._on_lost = on_lost
        self._stall_timeout = stall_timeout
        self._lock = threading.Lock()
        self._finished = False  # no callback is posted after this is set
        self._cancelled = False  # by the caller: no callback runs after this is set
        self._requests: queue.SimpleQueue[Any | None] = queue.SimpleQueue()
        self._endpoint: Endpoint | None = None
        self._call: Any = None
        self._last_response = time.monotonic()
        self._asked_at = 0.0  # when the progress request now outstanding was sent; 0 = none

    @property
    def endpoint(self) -> str:
        return self._endpoint.address if self._endpoint else ""

    @property
    def finished(self) -> bool:
        """Lost or cancelled: no callback will be posted any more."""
        return self._finished

    def start(self) -> None:
        """Open the stream on the current endpoint; call on the loop thread."""
        self._endpoint = self._endpoints.current()
        self._requests.put(
            WatchRequest(
                create_request=WatchCreateRequest(
                    key=self._prefix.encode(),
                    range_end=self._end,
                    start_revision=self._start,
                    progress_notify=True,
                    fragment=True,
                )
            )
        )
        self._last_response = time.monotonic()
        try:
            self._call = watch_method(self._endpoint.channel)(
                self._request_iter(), metadata=HASLEADER
            )
        except Exception as err:  # noqa: BLE001 - any failure means the watch is lost
            self._lose(err)
            return
        threading.Thread(target=self._read, name=f"etcd-watch {self._prefix}",
                         daemon=True).start()
        self._loop.call_later(self._stall_timeout / 3, self._tick)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._finished = True
        self._close_stream()

    # -- internals -----------------------------------------------------------------------

    def _request_iter(self) -> Iterator[Any]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def _close_stream(self) -> None:
        self._requests.put(None)
        if self._call is not None:
            self._call.cancel()

    def _tick(self) -> None:
        """On the loop: ask for a progress response, and give up on a stream that left a
        question unanswered for the stall timeout. Silence counts only from a question
        actually sent: a loop that was busy (a long scheduling pass) sent none, and an idle
        prefix sends nothing by itself, so neither is mistaken for a stalled member."""
        if self._finished:
            return
        now = time.monotonic()
        if self._asked_at and self._last_response < self._asked_at:
            silent = now - self._asked_at
            if silent > self._stall_timeout:
                self._lose(StoreUnavailable(
                    f"etcd watch on {self._prefix} stalled: no answer from {self.endpoint} "
                    f"for {silent:.1f}s"))
                return
        else:
            self._asked_at = now
            self._requests.put(WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        self._loop.call_later(self._stall_timeout / 3, self._tick)

    def _read(self) -> None:
        events: list[WatchEvent] = []
        err: Exception
        try:
            for resp in self._call:
                self._last_response = time.monotonic()
                if resp.canceled:
                    reason = resp.cancel_reason or "cancelled by etcd"
                    if resp.compact_revision:
                        reason = (f"revision {self._start} compacted "
                                  f"(oldest available {resp.compact_revision})")
                    leaderless = any(t in reason for t in NO_LEADER_TEXTS)
                    kind = WatchCompacted if resp.compact_revision else StoreUnavailable
                    self._lose(kind(f"etcd watch on {self._prefix}: {reason}"),
                               failover=leaderless)
                    return
                events.extend(
                    WatchEvent(deleted=ev.type == _DELETE, kv=kv_from_pb(ev.kv))
                    for ev in resp.events
                )
                if resp.fragment or not events:
                    continue  # more fragments follow, or a created/progress response
                self._deliver(events, int(resp.header.revision))
                events = []
            err = StoreUnavailable(f"etcd ended the watch on {self._prefix}")
        except grpc.RpcError as rpc_err:
            err = rpc_err
        except Exception as other:  # noqa: BLE001 - any failure means the watch is lost
            err = other
        self._lose(err)

    def _deliver(self, events: list[WatchEvent], revision: int) -> None:
        with self._lock:
            if self._finished:
                return
            self._post(self._on_events, events, revision)

    def _lose(self, err: Exception, failover: bool = True) -> None:
        """Report the watch lost (once) and close its stream. failover: the member is dead,
        hung or leaderless, so the next watch (and call) goes to the next member; not for a
        compaction, which says nothing about the member."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            lost = err
            if not isinstance(err, StoreUnavailable):
                lost = StoreUnavailable(f"etcd watch on {self._prefix}: {describe(err)}")
                lost.__cause__ = err
            self._post(self._on_lost, lost)
        if failover and self._endpoint is not None:
            self._endpoints.advance_from(self._endpoint, str(lost))
        self._close_stream()

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            if not self._cancelled:
                callback(*args)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._finished = True
