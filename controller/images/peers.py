"""Replication of a local blob store between controller replicas.

Each replica keeps its own copy of every blob (LocalBlobStore). After a push, the replica
that received it asks every other live replica (replicas/ in etcd) to ReplicateBlob; each
fetches it back with PullImage(local_only=True), verifying the digest as the bytes arrive. A
replica asked for a blob it lacks fetches it from a peer first. Concurrent fetches of one
digest share one transfer. A background pass (catch_up) fetches any blob a content record
names that this replica lacks, so a replica that was down or unreachable at push time
catches up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc

from controller.errors import InvalidArgument, NotFound, Unavailable
from controller.images.blobstore import BlobStore
from controller.security.tls import Dialer
from controller.store import Store

log = logging.getLogger(__name__)
REPLICATE_TIMEOUT_S = 3600.0  # a peer copying a blob of gigabytes
RESUMES = 3
RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


class BlobPeers:
    def __init__(self, store: Store, blobs: BlobStore, dialer: Dialer, advertise: str) -> None:
        self.store = store
        self.blobs = blobs
        self.dialer = dialer
        self.advertise = advertise
        self._fetching: dict[str, asyncio.Task[None]] = {}

    def peers(self) -> list[str]:
        """Agent-port addresses of the other live replicas."""
        return sorted({a for a in self.store.cache.replicas.values()
                       if a and a != self.advertise})

    async def fetch(self, digest: str, source: str = "") -> None:
        """Make the blob present here, from `source` or any peer. One transfer per digest
        at a time; NotFound if no peer has it."""
        if await self.blobs.has(digest):
            return
        task = self._fetching.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(digest, source), name=f"fetch-{digest[:19]}")
            self._fetching[digest] = task
            task.add_done_callback(lambda _t: self._fetching.pop(digest, None))
        await asyncio.shield(task)

    async def _fetch(self, digest: str, source: str) -> None:
        sources = [source] if source else []
        sources += [p for p in self.peers() if p != source]
        errors: list[str] = []
        for address in sources:
            try:
                await self._copy_from(address, digest)
                log.info("blob %s copied from replica %s", digest[:19], address)
                return
            except (grpc.aio.AioRpcError, InvalidArgument, OSError) as err:
                detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
                errors.append(f"{address}: {detail}")
        if not sources:
            raise NotFound(f"no image content {digest} on this controller, and no other "
                           "replica to fetch it from")
        raise NotFound(f"no image content {digest} on this controller, and no replica could "
                       f"provide it ({'; '.join(errors)[:400]})")

    async def _copy_from(self, address: str, digest: str) -> None:
        """Copy one blob from a peer, resuming from the bytes already received when the
        stream breaks (up to RESUMES times); the digest is verified at the end."""
        async with self.dialer.aio_channel(address) as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            async with await self.blobs.spool() as spool:
                for attempt in range(RESUMES + 1):
                    call: Any = stub.PullImage(apb.PullImageRequest(
                        digest=digest, offset=spool.size, local_only=True))
                    try:
                        async for chunk in call:
                            await spool.write(chunk.data)
                        break
                    except grpc.aio.AioRpcError as err:
                        if err.code() not in RESUMABLE or attempt == RESUMES:
                            raise
                        log.info("copy of %s from %s broke at %d bytes (%s); resuming",
                                 digest[:19], address, spool.size, err.code().name)
                await spool.commit(digest)  # verifies the digest

    async def replicate(self, digest: str, size: int) -> tuple[int, list[str]]:
        """Ask every peer to take a copy: (copies made, failures "address: why")."""
        peers = self.peers()
        results = await asyncio.gather(*(self._ask(p, digest, size) for p in peers),
                                       return_exceptions=True)
        failed = [f"{p}: {r}" for p, r in zip(peers, results, strict=True) if r is not True]
        return len(peers) - len(failed), failed

    async def _ask(self, address: str, digest: str, size: int) -> bool:
        try:
            async with self.dialer.aio_channel(address) as channel:
                stub = agent_pb2_grpc.AgentGatewayStub(channel)
                reply = await stub.ReplicateBlob(
                    apb.ReplicateBlobRequest(digest=digest, source=self.advertise,
                                             size_bytes=size),
                    timeout=REPLICATE_TIMEOUT_S)
                return bool(reply.present)
        except grpc.aio.AioRpcError as err:
            raise Unavailable(err.details() or err.code().name) from None

    async def catch_up(self) -> int:
        """Fetch every blob a content record names that this replica lacks; returns how
        many are still missing."""
        missing = 0
        for digest in sorted(self.store.cache.contents):
            if await self.blobs.has(digest):
                continue
            try:
                await self.fetch(digest)
            except NotFound as err:
                log.warning("catching up blob %s: %s", digest[:19], err)
                missing += 1
        return missing
