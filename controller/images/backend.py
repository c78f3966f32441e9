"""What the API and the gateway share about image bytes: the blob store, replication
between replicas (local stores only), and the size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from controller.errors import NotFound
from controller.images.blobstore import BlobStore
from controller.images.checks import MAX_IMAGE_BYTES
from controller.images.peers import BlobPeers


@dataclass
class ImageBackend:
    blobs: BlobStore
    peers: BlobPeers | None = None      # None: a shared store (registry), nothing to copy
    max_bytes: int = MAX_IMAGE_BYTES

    async def ensure_local(self, digest: str) -> None:
        """The blob is readable here: fetched from a peer replica first if missing."""
        if await self.blobs.has(digest):
            return
        if self.peers is None:
            raise NotFound(f"no image content {digest} in the blob store")
        await self.peers.fetch(digest)

    async def read(self, digest: str, offset: int, local_only: bool) -> AsyncIterator[bytes]:
        if not local_only:
            await self.ensure_local(digest)
        async for data in self.blobs.open_read(digest, offset):
            yield data
