"""The default blob store: a directory on this controller replica.

DATA_DIR/blobs/sha256/<hex> holds one blob per file; DATA_DIR/blobs/uploads/ holds pushes in
progress (emptied at start: an upload a crash interrupted is never resumed). A blob appears
under its digest by one atomic rename after its sha256 was verified, so a reader never sees
a partial blob."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from controller.errors import NotFound, OutOfRange
from controller.images.blobstore import CHUNK, DIGEST, Spool, hex_of


class LocalBlobStore:
    shared = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "sha256"
        self.uploads = root / "uploads"

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.uploads, ignore_errors=True)
        self.uploads.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    def path(self, digest: str) -> Path:
        return self.blobs / hex_of(digest)

    async def has(self, digest: str) -> bool:
        return await self.size(digest) is not None

    async def size(self, digest: str) -> int | None:
        path = self.path(digest)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            return None

    async def open_read(self, digest: str, offset: int = 0) -> AsyncIterator[bytes]:
        path = self.path(digest)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise NotFound(f"no image content {digest} on this controller") from None
        try:
            size = os.fstat(f.fileno()).st_size
            if offset > size:
                raise OutOfRange(f"offset {offset} is past the end of {digest} ({size} bytes)")
            f.seek(offset)
            while data := await asyncio.to_thread(f.read, CHUNK):
                yield data
        finally:
            f.close()

    async def spool(self) -> Spool:
        return await asyncio.to_thread(Spool, self.uploads, self._commit)

    async def _commit(self, path: Path, digest: str, size: int) -> None:
        await asyncio.to_thread(self._file, path, digest)

    def _file(self, path: Path, digest: str) -> None:
        final = self.path(digest)
        if final.exists():  # the same content again: keep the stored copy, fresh
            os.utime(final)
            return
        os.replace(path, final)
        fd = os.open(self.blobs, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the rename survives a crash
        finally:
            os.close(fd)

    async def delete(self, digest: str) -> None:
        await asyncio.to_thread(self.path(digest).unlink, True)

    async def digests(self) -> list[str]:
        names = await asyncio.to_thread(os.listdir, self.blobs)
        return sorted(d for n in names if DIGEST.fullmatch(d := "sha256:" + n))

    async def touch(self, digest: str) -> None:
        try:
            await asyncio.to_thread(os.utime, self.path(digest))
        except FileNotFoundError:
            pass

    async def age(self, digest: str) -> float:
        try:
            st = await asyncio.to_thread(self.path(digest).stat)
        except FileNotFoundError:
            return 0.0
        return max(0.0, time.time() - st.st_mtime)
