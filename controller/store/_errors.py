"""What an etcd error means to the controller: the StoreError it becomes.

etcd refuses every write once a member's database reaches --quota-backend-bytes and raises
its NOSPACE alarm ("etcdserver: mvcc: database space exceeded"); reads, deletes and
compactions still work. The alarm stays raised until an operator disarms it, so the error
carries what to do (docs/operations.md, "etcd is full").
"""

from __future__ import annotations

from typing import Final

from controller.errors import (
    NOSPACE_HINT,
    Compacted,
    StoreError,
    StoreFull,
    StoreUnavailable,
)
from controller.store._endpoints import describe, details_of

NOSPACE_TEXT: Final = "database space exceeded"
COMPACTED_TEXT: Final = "required revision has been compacted"
TOO_LARGE_TEXT: Final = "larger than max"  # gRPC: "Received message larger than max (…)"


class ResponseTooLarge(StoreUnavailable):
    """An answer above the channel's receive limit: a range to ask again in smaller pages
    (EtcdStore.range_page does)."""


def is_nospace(err: BaseException) -> bool:
    return NOSPACE_TEXT in details_of(err)


def store_error(address: str, err: BaseException) -> StoreError:
    """The StoreError for a failed etcd call that is not a reason to change member."""
    if is_nospace(err):
        return StoreFull(NOSPACE_HINT)
    if COMPACTED_TEXT in details_of(err):
        return Compacted(f"etcd {address}: {describe(err)}")
    if TOO_LARGE_TEXT in details_of(err):
        return ResponseTooLarge(f"etcd {address}: {describe(err)}")
    return StoreUnavailable(f"etcd {address}: {describe(err)}")
