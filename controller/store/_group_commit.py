"""Group commit: transactions that arrive while etcd is busy go to it together, as one.

Each etcd proposal costs about the same whatever it holds (a raft round, a WAL fsync and,
measured on the 2-core machine, about 2 ms of etcd's CPU), so a replica creating partitions,
applying reports and writing audit records one transaction each spent etcd's whole budget
on a few hundred small proposals a second. Here a transaction is sent at once while fewer
than MAX_BATCHES are at etcd; otherwise it waits, and the next batch carries every waiting
transaction that is independent of the others, each as a nested transaction (etcd 3.3 and
later) with its own compares and its own outcome. One proposal, one revision, many writers.

Independence: etcd judges every nested transaction's compares against the state before the
batch, so a transaction joins a batch only if it writes no key that another one in the
batch reads or writes, and reads (compares) no key that another one writes. A transaction
left out for a conflict keeps its place: later ones that touch its keys wait with it, so the
writes to one key reach etcd in the order they were asked for.

Failure: a batch is one request. When etcd cannot be reached or answer in time (maybe
applied) every transaction in it gets that error, exactly as each would have alone. When
etcd refuses the request as a whole, nothing was applied, and one transaction's fault must
not become the others': etcd full refuses a batch with one put in it, though a transaction
of deletes alone would pass; a put naming an expired lease fails the whole request. Then
each is sent again on its own and gets its own answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from pyetcd import etcdrpc

from controller.errors import StoreUnavailable
from controller.store._txn import Compare, Op, TxnResult, build_txn

__all__ = ["GroupCommit"]

Send = Callable[[Any], Awaitable[Any]]  # a TxnRequest to etcd -> its TxnResponse


@dataclass
class _Waiting:
    compares: Sequence[Compare]
    ops: Sequence[Op]
    done: asyncio.Future[TxnResult]
    writes: frozenset[str] = field(init=False)
    reads: frozenset[str] = field(init=False)
    size: int = field(init=False)
    width: int = field(init=False)

    def __post_init__(self) -> None:
        self.writes = frozenset(op.key for op in self.ops)
        self.reads = frozenset(c.key for c in self.compares)
        self.size = sum(len(op.key) + len(op.value or b"") + 16 for op in self.ops) + sum(
            len(c.key) + 16 for c in self.compares)
        self.width = max(len(self.compares), len(self.ops))


class GroupCommit:
    """Batches one loop's transactions; `send` makes the call (deadline, member choice)."""

    #: batches at etcd at once: the first few transactions go alone, with no wait; the rest
    #: gather behind them.
    MAX_BATCHES = 4
    #: etcd's --max-txn-ops (default 128). It bounds a batch's nested transactions and,
    #: less their count, each nested transaction's compares and ops: a batch of N carries
    #: transactions of at most 128 - N compares and 128 - N ops each.
    MAX_TXN_OPS = 128
    #: bytes of keys and values in one batch, well under etcd's --max-request-bytes (1.5 MiB);
    #: a larger transaction goes alone.
    MAX_BYTES = 512 * 1024

    def __init__(self, send: Send, observe: Callable[[float, bool], None] | None = None,
                 observe_batch: Callable[[int], None] | None = None) -> None:
        """observe(seconds, succeeded) runs for each transaction etcd answered;
        observe_batch(n) for each request sent, with the transactions it carried."""
        self._send = send
        self._observe = observe
        self._observe_batch = observe_batch
        self._waiting: deque[_Waiting] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: batches sent and transactions they carried (for metrics and benches)
        self.batches = 0
        self.carried = 0

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        loop = asyncio.get_running_loop()
        entry = _Waiting(compares, ops, loop.create_future())
        self._waiting.append(entry)
        self._pump()
        return await entry.done

    def _pump(self) -> None:
        while self._waiting and self._in_flight < self.MAX_BATCHES:
            batch = self._take()
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting]:
        """The next batch: waiting transactions in order, each independent of those taken
        and of those left behind before it."""
        batch: list[_Waiting] = []
        writes: set[str] = set()
        reads: set[str] = set()
        held_writes: set[str] = set()
        held_reads: set[str] = set()
        size = width = 0
        left: deque[_Waiting] = deque()
        waiting = self._waiting
        while waiting:
            if len(batch) + 2 + width > self.MAX_TXN_OPS or size >= self.MAX_BYTES:
                break   # full: the rest keep their places
            entry = waiting.popleft()
            if entry.done.done():
                continue  # its caller gave up before it was sent
            fits = not batch or (
                len(batch) + 1 + max(width, entry.width) <= self.MAX_TXN_OPS
                and size + entry.size <= self.MAX_BYTES)
            # (isdisjoint: no set is copied, so a long queue costs no more per entry)
            independent = (entry.writes.isdisjoint(writes)
                           and entry.writes.isdisjoint(reads)
                           and entry.writes.isdisjoint(held_writes)
                           and entry.writes.isdisjoint(held_reads)
                           and entry.reads.isdisjoint(writes)
                           and entry.reads.isdisjoint(held_writes))
            if fits and independent:
                batch.append(entry)
                writes |= entry.writes
                reads |= entry.reads
                size += entry.size
                width = max(width, entry.width)
            else:
                left.append(entry)
                held_writes |= entry.writes
                held_reads |= entry.reads
        left.extend(waiting)
        self._waiting = left
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            if len(batch) == 1:
                await self._alone(batch[0])
            else:
                await self._together(batch)
        finally:
            self._in_flight -= 1
            self._pump()

    async def _alone(self, entry: _Waiting) -> None:
        started = asyncio.get_running_loop().time()
        try:
            resp = await self._send(build_txn(entry.compares, entry.ops))
        except asyncio.CancelledError:
            entry.done.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - handed to its caller, whatever it is
            _fail(entry, err)
            return
        self._count(1)
        self._settle(entry, bool(resp.succeeded), int(resp.header.revision), started)

    async def _together(self, batch: list[_Waiting]) -> None:
        started = asyncio.get_running_loop().time()
        req = etcdrpc.TxnRequest(success=[
            etcdrpc.RequestOp(request_txn=build_txn(e.compares, e.ops)) for e in batch])
        try:
            resp = await self._send(req)
        except asyncio.CancelledError:
            for entry in batch:
                entry.done.cancel()
            raise
        except StoreUnavailable as err:
            if _refused(err):
                # etcd answered no to the request as a whole (a lease one of them names has
                # expired): nothing was applied, so each is asked on its own.
                await asyncio.gather(*(self._alone(e) for e in batch))
                return
            for entry in batch:
                _fail(entry, err)
            return
        except Exception:  # noqa: BLE001 - refused as a whole: each is asked on its own
            await asyncio.gather(*(self._alone(e) for e in batch))
            return
        self._count(len(batch))
        revision = int(resp.header.revision)
        for entry, answer in zip(batch, resp.responses, strict=True):
            self._settle(entry, bool(answer.response_txn.succeeded), revision, started)

    def _count(self, carried: int) -> None:
        self.batches += 1
        self.carried += carried
        if self._observe_batch is not None:
            self._observe_batch(carried)

    def _settle(self, entry: _Waiting, succeeded: bool, revision: int, started: float) -> None:
        if self._observe is not None:
            self._observe(asyncio.get_running_loop().time() - started, succeeded)
        if not entry.done.done():
            entry.done.set_result(TxnResult(succeeded, revision))


#: what a failed call may mean "maybe applied" for: etcd gone, slow, or the answer lost
_MAYBE_APPLIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                            grpc.StatusCode.INTERNAL})


def _refused(err: StoreUnavailable) -> bool:
    """True when etcd answered and refused the request (it applied nothing): the gRPC
    status behind the error is a definite no, such as NOT_FOUND for a lease that expired."""
    code = getattr(err.__cause__, "code", None)
    if not callable(code):
        return False
    try:
        status = code()
    except Exception:  # noqa: BLE001 - not a gRPC error after all
        return False
    return isinstance(status, grpc.StatusCode) and status not in _MAYBE_APPLIED


def _fail(entry: _Waiting, err: Exception) -> None:
    if not entry.done.done():
        entry.done.set_exception(err)
