"""Streaming download of one image blob from the controller's PullImage into a partial file.

The sha256 is computed as the chunks arrive and every chunk goes straight to the file, so
memory stays flat whatever the blob's size. A broken connection (the controller restarted,
failed over, the network dropped) resumes from the bytes already in the partial file with
PullImageRequest.offset; the download gives up only once no byte arrived for
``no_progress_s`` (30 s). At the end size and digest are checked: a blob that does not match
is deleted, never installed.

The partial file may already hold a prefix from an earlier attempt in this agent's life
(one that gave up for want of progress): it is re-hashed, then the download continues from
its end.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc

from node_agent.images import ImagePullError, check_digest

log = logging.getLogger(__name__)

NO_PROGRESS_S = 30.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0
#: Chunks at least this big are hashed and written off the event loop.
THREAD_BYTES = 64 << 10
#: Pieces the existing partial file is re-hashed in.
REHASH_BYTES = 1 << 20
#: Codes a pull sees when its controller goes away mid-stream, not when the blob is bad.
#: (RESOURCE_EXHAUSTED is not one: a chunk over the message limit would come again.)
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
                       grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
                       grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # (absent from grpc-stubs)

Gateway = Callable[[], agent_pb2_grpc.AgentGatewayStub | None]


def _details(err: grpc.aio.AioRpcError) -> str:
    """The controller's one-line reason (bounded: it ends up in a partition's report)."""
    text = (err.details() or err.code().name).splitlines()
    return text[0][:300] if text else err.code().name


class _BadContent(ImagePullError):
    """What arrived is not the blob: the partial file goes."""


class _Transient(Exception):
    """The stream broke (or there is no controller); retry from where the file ends."""


class _Partial:
    """The partial file and the running hash of what it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.file: BinaryIO = os.fdopen(fd, "r+b", buffering=0)
        self.hasher = hashlib.sha256()
        self.length = 0
        self.progress_at = time.monotonic()   # when the last byte arrived

    def rehash(self) -> None:
        """Hash what the file holds already (an earlier attempt's prefix)."""
        self.file.seek(0)
        while piece := self.file.read(REHASH_BYTES):
            self.hasher.update(piece)
            self.length += len(piece)

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate(0)
        self.hasher = hashlib.sha256()
        self.length = 0

    def absorb(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self.file.write(view)
            if not written:
                raise OSError("short write")
            view = view[written:]
        self.hasher.update(data)
        self.length += len(data)
        self.progress_at = time.monotonic()

    def close(self) -> None:
        self.file.close()


class BlobPuller:
    """Pulls blobs through whichever controller session is current (``gateway()``)."""

    def __init__(self, gateway: Gateway, no_progress_s: float = NO_PROGRESS_S) -> None:
        self._gateway = gateway
        self.no_progress_s = no_progress_s
        self.received = 0     # bytes received over this puller's life (for tests, metrics)

    async def pull(self, digest: str, size: int, dest: Path, what: str) -> None:
        """Download blob ``digest`` of ``size`` bytes into ``dest``. After a failure for
        want of progress (or a refusal) the prefix stays, so a later pull resumes; content
        that proves wrong, or a write that fails, deletes it."""
        check_digest(digest)
        try:
            part = await asyncio.to_thread(_Partial, dest)
            try:
                await asyncio.to_thread(part.rehash)
                if part.length > size:
                    await asyncio.to_thread(part.restart)
                part.progress_at = time.monotonic()
                await self._fill(part, digest, size, what)
            finally:
                part.close()
        except _BadContent:
            dest.unlink(missing_ok=True)
            raise
        except OSError as err:
            dest.unlink(missing_ok=True)
            raise ImagePullError(f"pull of {what} failed: cannot write to the image cache: "
                                 f"{err.strerror or err}") from None

    async def _fill(self, part: _Partial, digest: str, size: int, what: str) -> None:
        delay = BACKOFF_MIN_S
        restarted = False
        why = "not connected to a controller"
        while True:
            before = part.length
            try:
                await self._stream(part, digest, size, what)
            except _Transient as err:
                why = str(err)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.OUT_OF_RANGE and part.length and \
                        not restarted:
                    # The controller's blob is shorter than our prefix: not ours to resume.
                    log.warning("pull of %s: offset %d refused (%s); starting over", what,
                                part.length, _details(err))
                    await asyncio.to_thread(part.restart)
                    restarted = True
                    continue
                raise ImagePullError(
                    f"pull of {what} failed: {_details(err)}") from None
            else:
                self._verify(part, digest, size, what)
                return
            if part.length > before:
                delay = BACKOFF_MIN_S
            if time.monotonic() + delay > part.progress_at + self.no_progress_s:
                raise ImagePullError(
                    f"pull of {what} failed: no progress for {self.no_progress_s:g}s at "
                    f"{part.length} of {size} bytes ({why})")
            log.info("pull of %s at %d of %d bytes: %s; resuming in %.1fs", what,
                     part.length, size, why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _stream(self, part: _Partial, digest: str, size: int, what: str) -> None:
        """One PullImage call from the end of the partial file to the end of the stream.
        Raises _Transient when the stream breaks, or stalls past the no-progress limit."""
        gw = self._gateway()
        if gw is None:
            raise _Transient("not connected to a controller")
        call: Any = gw.PullImage(apb.PullImageRequest(digest=digest, offset=part.length))
        try:
            while True:
                remaining = part.progress_at + self.no_progress_s - time.monotonic()
                try:
                    msg = await asyncio.wait_for(call.read(), max(remaining, 0.0))
                except TimeoutError:
                    raise _Transient("the stream stalled") from None
                if msg is _EOF:
                    return
                data: bytes = msg.data
                if part.length + len(data) > size:
                    raise _BadContent(f"pull of {what} failed: the content is longer than "
                                      f"its recorded size, {size} bytes")
                if len(data) >= THREAD_BYTES:
                    await asyncio.to_thread(part.absorb, data)
                else:
                    part.absorb(data)
                self.received += len(data)
        except grpc.aio.AioRpcError as err:
            if err.code() in TRANSIENT:
                raise _Transient(_details(err)) from None
            raise
        finally:
            call.cancel()

    def _verify(self, part: _Partial, digest: str, size: int, what: str) -> None:
        """After a clean end of stream: the file must be the blob."""
        if part.length != size:
            raise _BadContent(f"pull of {what} failed: the content ended at "
                              f"{part.length} of {size} bytes")
        actual = "sha256:" + part.hasher.hexdigest()
        if actual != digest:
            raise _BadContent(
                f"pull of {what} failed: the content has digest {actual}, expected {digest}")
