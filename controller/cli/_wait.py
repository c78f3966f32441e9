"""Waiting for a partition to reach a phase: WatchPartitions, with GetPartition polling.

The watch makes waits prompt; the periodic GetPartition covers the moment before the watch is
established, a controller that does not implement the watch, and a watch that breaks.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import grpc
from viridian.v1 import controller_pb2, controller_pb2_grpc, types_pb2

from controller.cli.client import cancel

__all__ = ["WaitTimeout", "wait_for"]

_GONE = object()


class WaitTimeout(Exception):
    """The deadline passed; `last` is the partition as last seen (None if never read)."""

    def __init__(self, last: types_pb2.Partition | None) -> None:
        super().__init__("timed out")
        self.last = last


def _get(
    stub: controller_pb2_grpc.ControllerStub, name: str
) -> types_pb2.Partition | None:
    try:
        return stub.GetPartition(controller_pb2.GetPartitionRequest(name=name), timeout=10)
    except grpc.RpcError as err:
        if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def wait_for(
    stub: controller_pb2_grpc.ControllerStub,
    name: str,
    done: Callable[[types_pb2.Partition | None], bool],
    *,
    timeout: float | None,
    poll_interval: float = 1.0,
    on_update: Callable[[types_pb2.Partition], None] | None = None,
) -> types_pb2.Partition | None:
    """Return the partition once `done(partition)` holds (None: it no longer exists).

    Raises WaitTimeout after `timeout` seconds (None waits forever).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    updates: queue.Queue[object] = queue.Queue()
    call = stub.WatchPartitions(controller_pb2.WatchPartitionsRequest(name=name))

    def pump() -> None:
        try:
            for event in call:
                if event.type == controller_pb2.PartitionWatchEvent.TYPE_DELETED:
                    updates.put(_GONE)
                elif event.partition.name == name:
                    updates.put(event.partition)
        except grpc.RpcError:
            pass  # cancelled, or no watch on this server: polling carries on alone

    watcher = threading.Thread(target=pump, name=f"watch-{name}", daemon=True)
    watcher.start()
    last: types_pb2.Partition | None = None
    try:
        current: types_pb2.Partition | None = _get(stub, name)
        while True:
            if current is not None:
                last = current
                if on_update is not None:
                    on_update(current)
            if done(current):
                return current
            if current is None:  # gone, but the caller wanted something else
                return None
            remaining = poll_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(last)
                remaining = min(remaining, left)
            try:
                item = updates.get(timeout=remaining)
                current = None if item is _GONE else item  # type: ignore[assignment]
            except queue.Empty:
                current = _get(stub, name)
    finally:
        cancel(call)
