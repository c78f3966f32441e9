"""The content-addressed blob store every image's bytes live in (never etcd).

One interface, two backends: a directory on each controller replica (local.py, replicated
between replicas by peers.py) and an OCI distribution registry (registry.py), shared by all.
Bytes come in through a `Spool`: chunks are written to a temporary file with a running
sha256 (both in a worker thread, so the event loop stays free and the push is never held in
memory), the content checks read that file, and `commit` files it under its digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from controller.errors import InvalidArgument

DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
CHUNK = 1 << 20


def hex_of(digest: str) -> str:
    """The hex part of "sha256:HEX"; INVALID_ARGUMENT for anything else."""
    m = DIGEST.fullmatch(digest)
    if m is None:
        raise InvalidArgument(f"invalid digest {digest[:80]!r}: expected sha256: followed by "
                              "64 lower-case hex digits")
    return m.group(1)


class BlobStore(Protocol):
    """Blobs by digest ("sha256:<hex>"). `shared` stores (a registry) are the same for every
    replica: nothing to replicate, and only the leader sweeps them."""

    shared: bool

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def has(self, digest: str) -> bool: ...
    async def size(self, digest: str) -> int | None:
        """The blob's size, None if absent."""
    def open_read(self, digest: str, offset: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from `offset`, in chunks of at most 1 MiB, read as consumed.
        NotFound if absent; OutOfRange past the end."""
    async def spool(self) -> Spool:
        """A temporary file to write a new blob into; commit() files it."""
    async def delete(self, digest: str) -> None: ...
    async def digests(self) -> list[str]:
        """Every stored digest."""
    async def touch(self, digest: str) -> None:
        """Mark a blob as just used (the sweep spares blobs younger than its grace)."""
    async def age(self, digest: str) -> float:
        """Seconds since the blob was stored or touched (0 if unknown)."""


Committer = Callable[[Path, str, int], Awaitable[None]]


class Spool:
    """A blob being written: chunks go to `path` while their sha256 is computed.

    Used as an async context manager: leaving it without commit() (an error, a cancelled
    push) removes the file, so a failed push leaves nothing behind."""

    def __init__(self, directory: Path, committer: Committer) -> None:
        self.path = directory / f"upload-{uuid.uuid4().hex}"
        self._commit = committer
        self._file: BinaryIO | None = self.path.open("xb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.committed = ""

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, err: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self.committed:
            await asyncio.shield(asyncio.to_thread(self._discard))

    def _write(self, data: bytes) -> None:
        assert self._file is not None, "spool already closed"
        self._hash.update(data)
        self._file.write(data)

    async def write(self, data: bytes) -> None:
        """Append data (hashing and writing in a worker thread; the caller awaits it, which
        is the push's backpressure)."""
        self.size += len(data)
        await asyncio.to_thread(self._write, data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def _close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    async def finish(self) -> str:
        """Close the file (flushed to disk); returns the digest. The content can then be
        checked at `path` before commit()."""
        await asyncio.to_thread(self._close)
        return self.digest

    async def commit(self, expected: str = "") -> str:
        """File the content under its digest (verified against `expected` if given)."""
        await self.finish()
        digest = self.digest
        if expected and expected != digest:
            raise InvalidArgument(f"content digest {digest} does not match the announced "
                                  f"{expected}")
        await self._commit(self.path, digest, self.size)
        self.committed = digest
        await asyncio.to_thread(self._discard)  # a backend may have copied, not renamed
        return digest

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
