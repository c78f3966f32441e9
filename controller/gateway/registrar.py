"""Registrations gathered into shared etcd transactions, worked on in arrival order.

A mass reconnect brings thousands of Registers within seconds. Done one transaction each
(a read and a write per node, on the loop that also acknowledges heartbeats) they starved
the heartbeats, sessions timed out and re-registered, and the replica never caught up.
Here Registers queue; a worker takes up to ``BATCH`` of them (distinct nodes) and registers
them with one read and one transaction (NodeStore.register_many), with at most
``IN_FLIGHT`` batches at etcd at once, so the etcd round trip of one batch overlaps the
loop work of the next.

Before a Register gets here, gateway/admission.py has bounded how many nodes are setting up
sessions at once. In the queue, admission is by deadline: a caller waits for its turn until
shortly before its own deadline and is then answered UNAVAILABLE at once (the agent backs
off or tries another replica) rather than being registered for a caller that has given up.
A registration whose caller gave up after its batch was sent is still written; it is
harmless: the agent registers again and the newer claim supersedes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from controller.errors import StoreError, Unavailable
from controller.store.nodes import NodeStore, Registration

log = logging.getLogger(__name__)
#: nodes per transaction: three writes and a guard each, within etcd's 128 operations
BATCH = 32
#: batches at etcd at once
IN_FLIGHT = 2


@dataclass
class _Pending:
    registration: Registration
    done: asyncio.Future[tuple[int, bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Registrar:
    """Registers nodes for one replica (`holder`, whose node lease is `lease`)."""

    def __init__(self, nodes: NodeStore, batch: int = BATCH, in_flight: int = IN_FLIGHT
                 ) -> None:
        self._nodes = nodes
        self._batch = batch
        self._queue: deque[tuple[_Pending, str, int]] = deque()
        self._slots = asyncio.Semaphore(in_flight)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0      # transactions sent (for tests and benches)
        self.registered = 0

    async def register(self, registration: Registration, holder: str, lease: int,
                       wait: float | None) -> tuple[int, bool]:
        """(claim, first registration) of `registration`, waiting at most `wait` seconds
        for its batch to be sent (None: no limit); Unavailable when it was not sent in
        time. Store errors of its own registration are raised as they are."""
        pending = _Pending(registration)
        self._queue.append((pending, holder, lease))
        self._wake.set()
        self._ensure_worker()
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(pending.done)
        except TimeoutError:
            if pending.done.done() and not pending.done.cancelled():
                return pending.done.result()
            raise Unavailable(
                f"this controller is busy registering other nodes; node "
                f"{registration.name!r} should retry (here or at another replica)") from None
        finally:
            if not pending.done.done():
                pending.done.cancel()   # its caller gave up: not sent yet, the worker drops it

    def _ensure_worker(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._work(), name="registrar")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for pending, _, _ in self._queue:
            pending.done.cancel()
        self._queue.clear()

    async def _work(self) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    await self._slots.acquire()
                    batch = self._take()
                    if not batch:
                        self._slots.release()
                        continue
                    task = asyncio.create_task(self._send(batch))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    def _take(self) -> list[tuple[_Pending, str, int]]:
        """Up to BATCH waiting registrations of distinct nodes for one holder and lease,
        oldest first (a node already in this batch waits for the next one)."""
        batch: list[tuple[_Pending, str, int]] = []
        names: set[str] = set()
        later: list[tuple[_Pending, str, int]] = []
        while self._queue and len(batch) < self._batch:
            item = self._queue.popleft()
            pending, holder, lease = item
            if pending.done.done():
                continue    # its caller gave up
            if pending.registration.name in names or (
                    batch and (holder, lease) != batch[0][1:]):
                later.append(item)
                continue
            names.add(pending.registration.name)
            batch.append(item)
        self._queue.extendleft(reversed(later))
        return batch

    async def _send(self, batch: list[tuple[_Pending, str, int]]) -> None:
        try:
            _, holder, lease = batch[0]
            try:
                results: list[tuple[int, bool] | StoreError] = \
                    await self._nodes.register_many(
                        [p.registration for p, _, _ in batch], holder, lease)
            except StoreError as err:
                results = [err] * len(batch)
            self.batches += 1
            for (pending, _, _), result in zip(batch, results, strict=True):
                if pending.done.done():
                    continue
                if isinstance(result, StoreError):
                    pending.done.set_exception(result)
                else:
                    self.registered += 1
                    pending.done.set_result(result)
        except asyncio.CancelledError:
            for pending, _, _ in batch:
                pending.done.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - every waiter must be answered
            log.exception("registration batch failed")
            for pending, _, _ in batch:
                if not pending.done.done():
                    pending.done.set_exception(err)
        finally:
            self._slots.release()
