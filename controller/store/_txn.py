"""Transactions as the controller writes them: compares on mod revisions, puts and deletes
of single keys, and their etcd request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyetcd import etcdrpc

__all__ = ["Compare", "Op", "TxnResult", "build_txn"]


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
