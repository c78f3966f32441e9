"""Page sizes and page tokens of the list RPCs (ListPartitions, ListNodes, ListEvents,
ListImages).

A page token is opaque to clients: url-safe base64 of a small JSON object naming the list,
a digest of the request's filters, the last name the previous page examined and the etcd
revision the first page was read at. Every page of one listing is read at that revision, so
the pages together are one consistent view however the cluster changed in between. Tokens
come from clients, so they are checked like any input: a token that does not decode, was
made for another list or other filters, or names a revision etcd never had, is
INVALID_ARGUMENT; one whose revision etcd has compacted since (the leader compacts history
older than --compact-every) is ABORTED: the listing must start again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from controller.errors import Compacted, InvalidArgument
from controller.store import Store
from controller.store.scan import BUDGET, ScanPage

DEFAULT_PAGE = 500
MAX_PAGE = 5000
MAX_TOKEN_CHARS = 2048
VERSION = 1


def page_size(requested: int) -> int:
    """0 -> the default; anything above the maximum is served as the maximum."""
    return DEFAULT_PAGE if requested <= 0 else min(requested, MAX_PAGE)


def query_digest(**filters: Any) -> str:
    """A short digest of a request's filters: a token only continues the same query."""
    text = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after `after` (a name; "" = the start) at `revision` (0 =
    now: the first page)."""

    after: str = ""
    revision: int = 0

    @property
    def first(self) -> bool:
        return self.revision == 0


def encode_token(listing: str, query: str, after: str, revision: int) -> str:
    raw = json.dumps({"v": VERSION, "l": listing, "q": query, "a": after, "r": revision},
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, listing: str, query: str) -> Cursor:
    """The cursor a client's page_token names ("" = the first page); InvalidArgument for
    anything this server did not make for this list and these filters."""
    if not token:
        return Cursor()
    bad = InvalidArgument("invalid page_token: pass the next_page_token of the previous "
                          "page of the same list with the same filters, or none to start")
    if len(token) > MAX_TOKEN_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or set(data) != {"v", "l", "q", "a", "r"}:
        raise bad
    after, revision = data["a"], data["r"]
    if (data["v"] != VERSION or data["l"] != listing or data["q"] != query
            or not isinstance(after, str) or not after or len(after) > 1024
            or type(revision) is not int or revision < 1):
        raise bad
    try:
        after.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON
        raise bad from None
    return Cursor(after, revision)


def fitting(sizes: Sequence[int], budget: int = BUDGET) -> int:
    """How many of the leading items (of these encoded sizes) fit in budget bytes: one at
    least. For what a handler adds to stored records (a node's drain, with its list of
    partitions) that the scan's budget did not count."""
    used = 0
    for i, size in enumerate(sizes):
        used += size
        if used > budget and i:
            return i
    return len(sizes)


def next_token(listing: str, query: str, page: ScanPage[Any]) -> str:
    """The next_page_token of a page: "" when it was the last."""
    if not page.more or not page.last:
        return ""
    return encode_token(listing, query, page.last, page.revision)


async def open_cursor(store: Store, token: str, listing: str, query: str) -> Cursor:
    """Decode and check a page token, including that its revision is not in the future
    (etcd would refuse it as an internal error rather than a bad argument)."""
    cursor = decode_token(token, listing, query)
    if not cursor.first and cursor.revision > await store.etcd.revision():
        raise InvalidArgument("invalid page_token: it names a revision this cluster never "
                              "had; list again without a page token")
    return cursor


@contextlib.contextmanager
def restart_if_compacted(cursor: Cursor) -> Iterator[None]:
    """A later page whose revision etcd has compacted since: ABORTED, start again."""
    try:
        yield
    except Compacted as err:
        if cursor.first:
            raise
        raise Compacted(
            f"the list changed too much since its first page (etcd dropped the history of "
            f"revision {cursor.revision}); list again from the first page") from err
