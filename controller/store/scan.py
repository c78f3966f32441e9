"""Paged, filtered reads of one kind of object, all pages at one etcd revision.

A list API reads one page per call: scan() examines keys under the kind's prefix in key
order from just after the last name a previous page examined, at the revision the first
page was read at (so every page sees the same cluster, whatever was written in between),
and keeps those the caller's `pick` accepts until it has `want` of them, or until their
stored values reach `budget` bytes (a page of partitions with 128 KiB of arguments each
would otherwise pass gRPC's 4 MiB message limit long before its page size). etcd is read in
batches of at most BATCH keys (fewer when they are too large for one answer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from controller.store.etcd import KV, EtcdStore

T = TypeVar("T")
BATCH = 1000  # keys per etcd range request
BUDGET = 2 << 20  # bytes of stored values per page: half of gRPC's default message limit


@dataclass
class ScanPage(Generic[T]):
    """What one scan found: the picked items in key order, the revision they were read at,
    the name of the last key examined (resume after it), and whether keys remain."""

    items: list[T] = field(default_factory=list)
    revision: int = 0
    last: str = ""
    more: bool = False


async def scan(etcd: EtcdStore, kind_prefix: str, *, name_prefix: str = "",
               after: str = "", revision: int = 0, want: int,
               pick: Callable[[KV], T | None], budget: int = BUDGET) -> ScanPage[T]:
    """Up to `want` items picked from the keys kind_prefix + NAME (NAME starting with
    name_prefix, greater than `after`), read at `revision` (0: now; the page's revision
    is returned), whose values add up to `budget` bytes at most (one item at least).
    Raises Compacted when `revision` is older than etcd's history."""
    if want < 1:
        raise ValueError("want must be at least 1")
    prefix = kind_prefix + name_prefix
    out: ScanPage[T] = ScanPage(revision=revision)
    cursor = kind_prefix + after if after else None
    if cursor is not None and not cursor.startswith(prefix):
        if cursor > prefix:
            return out  # past every name with name_prefix: nothing left
        cursor = None
    batch = min(BATCH, max(want, 100))
    used = 0
    while True:
        got = await etcd.range_page(prefix, cursor, out.revision, batch)
        out.revision = got.revision
        for i, kv in enumerate(got.kvs):
            item = pick(kv)
            if item is not None:
                if out.items and used + len(kv.value) > budget:
                    out.more = True  # this one starts the next page
                    return out
                used += len(kv.value)
                out.items.append(item)
            out.last = kv.key[len(kind_prefix):]
            if len(out.items) >= want:
                out.more = got.more or i < len(got.kvs) - 1
                return out
        if not got.more:
            return out
        cursor = got.kvs[-1].key


async def between(etcd: EtcdStore, kind_prefix: str, first: str, last: str,
                  revision: int) -> dict[str, KV]:
    """The keys kind_prefix + NAME with first <= NAME <= last at `revision`, by NAME (the
    companions of one page of another kind, e.g. the bindings of a page of partitions)."""
    out: dict[str, KV] = {}
    start = kind_prefix + first
    end = kind_prefix + last
    while True:
        got = await etcd.range_keys(start, end, revision, BATCH)
        for kv in got.kvs:
            out[kv.key[len(kind_prefix):]] = kv
        if not got.more:
            return out
        start = got.kvs[-1].key + "\0"
