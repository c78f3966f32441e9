"""Garbage collection of image content, and replicas catching up on blobs they lack.

Runs on every replica, periodically and whenever content records change:
- the leader deletes content records that no tag record and no partition (pinned to its
  digest at create) has named for `grace_s` (an image removed, a tag moved to new content
  and the last partition on the old one deleted);
- every replica deletes the blobs of its local store that no content record has named for
  `grace_s` and that were not stored or touched in that time (content deleted by the GC or
  a forced `image rm`, a blob filed by a push that failed before its records were written;
  a shared registry store is swept by the leader only);
- a replica with peers fetches the blobs content records name that it lacks.
The grace keeps a push that has filed its blob but not yet written its records safe, and
lets `image rm` followed by a push of the same content skip the upload.
"""

from __future__ import annotations

import logging
import time

from viridian.v1 import types_pb2 as pb

from controller.images.blobstore import BlobStore
from controller.images.peers import BlobPeers
from controller.loops.base import Loop
from controller.store import Store

log = logging.getLogger(__name__)
DEFAULT_GRACE_S = 60.0


class ImageGc(Loop):
    name = "image-gc"

    def __init__(self, store: Store, blobs: BlobStore, peers: BlobPeers | None,
                 grace_s: float = DEFAULT_GRACE_S) -> None:
        super().__init__()
        self.store = store
        self.blobs = blobs
        self.peers = peers
        self.grace_s = grace_s
        self.resync_s = max(0.1, min(grace_s / 2, 10.0))
        self._unnamed_since: dict[str, float] = {}   # content record digest -> first seen
        self._orphan_since: dict[str, float] = {}    # blob digest -> first seen unrecorded
        self.collected = 0   # content records deleted (leader)
        self.swept = 0       # blobs deleted
        self.missing = 0     # blobs recorded but not here (after the last catch-up)
        store.cache.subscribe(self._on_change)

    def _on_change(self, kind: str, _name: str) -> None:
        if kind in ("", "contents", "images", "replicas"):
            self.kick()

    async def reconcile(self) -> bool:
        now = time.monotonic()
        leading = self.store.leader.leading
        contents = await self.store.images.contents()
        if leading:
            await self._collect(contents, now)
            contents = await self.store.images.contents()
        if leading or not self.blobs.shared:
            await self._sweep(set(contents), now)
        if self.peers is not None:
            self.missing = await self.peers.catch_up()
        return False

    async def _collect(self, contents: dict[str, tuple[pb.Image, int]], now: float) -> None:
        named = {i.digest for i in await self.store.images.read_all()}
        named.update(self.store.cache.pinned_digests())  # pinned by partitions
        for digest in list(self._unnamed_since):
            if digest in named or digest not in contents:
                del self._unnamed_since[digest]
        for digest, (_record, revision) in contents.items():
            if digest in named:
                continue
            since = self._unnamed_since.setdefault(digest, now)
            if now - since < self.grace_s:
                continue
            if await self.store.images.delete_content(digest, revision):
                log.info("image content %s collected (no image names it)", digest[:19])
                self.collected += 1
            self._unnamed_since.pop(digest, None)

    async def _sweep(self, recorded: set[str], now: float) -> None:
        stored = await self.blobs.digests()
        for digest in list(self._orphan_since):
            if digest in recorded or digest not in stored:
                del self._orphan_since[digest]
        for digest in stored:
            if digest in recorded:
                continue
            since = self._orphan_since.setdefault(digest, now)
            if now - since < self.grace_s or await self.blobs.age(digest) < self.grace_s:
                continue
            await self.blobs.delete(digest)
            self._orphan_since.pop(digest, None)
            self.swept += 1
            log.info("blob %s deleted (no content record names it)", digest[:19])
