"""Public API: images (push as a client stream, tag, list in pages, delete).

A push streams its chunks into the blob store's spool (a temporary file, hashed as it is
written, never joined in memory), checks the content from that file in a worker thread,
files the blob under its digest, then writes the tag and content records to etcd in one
transaction. A push that fails or is interrupted before that transaction leaves no record
(and its temporary file is removed); a blob filed but never recorded is garbage collected.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api import paging
from controller.api.context import ApiContext
from controller.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from controller.grpc_errors import Context, map_errors
from controller.images.checks import check_image
from controller.images.refs import DEFAULT_TAG, Reference
from controller.images.resolve import records_of, resolve
from controller.scheduler.units import format_size
from controller.store import now_ts
from controller.validation import (
    check_args_env,
    check_entrypoint,
    check_image_header,
    check_tag,
    shown,
)

PAGE_BYTES = 2 << 20   # a page ends early past this size: far below gRPC's 4 MiB limit
MAX_USED_BY = 1000     # partition names listed per image (sorted; the first ones)
SOURCES = ("", "elf", "tar", "directory", "oci", "docker")


def _check_config(header: cpb.ImageHeader) -> None:
    """An image's OCI-style configuration: what a partition's args/env/workdir would be."""
    if header.tag:
        check_tag(header.tag)
    env: dict[str, str] = {}
    for item in header.env:
        key, eq, value = item.partition("=")
        if not eq:
            raise InvalidArgument(f"image environment entry {shown(item)} is not KEY=VALUE")
        env[key] = value
    check_args_env([*header.entry_args, *header.cmd], env)
    if header.workdir:
        check_entrypoint(header.workdir, "working directory")
        if not header.workdir.startswith("/"):
            raise InvalidArgument(f"working directory {shown(header.workdir)} is not absolute")
    if header.source not in SOURCES:
        raise InvalidArgument(f"unknown image source {shown(header.source)}: use one of "
                              + ", ".join(s for s in SOURCES if s))


class ImagesApi:
    ctx: ApiContext

    @map_errors
    async def PushImage(
        self, request_iterator: AsyncIterator[cpb.PushImageRequest], context: Context
    ) -> pb.Image:
        started = time.monotonic()
        try:
            image = await self._push(request_iterator)
        except OSError as err:  # the spool's disk: one line, no host path
            if err.errno == errno.ENOSPC:
                raise ResourceExhausted("no space left in the controller's blob store") \
                    from None
            raise Unavailable(f"the controller's blob store failed: "
                              f"{err.strerror or type(err).__name__}") from None
        self.ctx.metrics.image_push_seconds.observe(time.monotonic() - started)
        return image

    async def _push(self, request_iterator: AsyncIterator[cpb.PushImageRequest]) -> pb.Image:
        backend = self.ctx.images
        limit = backend.max_bytes
        header: cpb.ImageHeader | None = None
        async with await backend.blobs.spool() as spool:
            async for msg in request_iterator:
                if msg.HasField("header"):
                    if header is not None:
                        raise InvalidArgument("the image header must be sent once, first")
                    header = msg.header
                    check_image_header(header.name, header.format, header.entrypoint,
                                       header.digest)
                    _check_config(header)
                    if header.size_bytes > limit:
                        raise ResourceExhausted(
                            f"image of {format_size(header.size_bytes)} exceeds the "
                            f"{format_size(limit)} limit")
                    continue
                if header is None:
                    raise InvalidArgument("the first message must be the image header")
                if spool.size + len(msg.chunk) > limit:
                    raise ResourceExhausted(f"image exceeds the {format_size(limit)} limit")
                await spool.write(msg.chunk)
                self.ctx.metrics.image_push_bytes.inc(len(msg.chunk))
            if header is None:
                raise InvalidArgument("no image header received")
            size = spool.size
            if header.size_bytes and header.size_bytes != size:
                raise InvalidArgument(
                    f"received {size} bytes, the header announced {header.size_bytes}")
            if not size:
                raise InvalidArgument("the image is empty")
            digest = await spool.finish()
            if header.digest and header.digest != digest:
                raise InvalidArgument(
                    f"content digest {digest} does not match the announced {header.digest}")
            fmt = header.format or "elf"
            checked = await asyncio.to_thread(check_image, header.name, fmt, header.entrypoint,
                                              spool.path)
            await spool.commit(digest)
        image = pb.Image(
            name=header.name, tag=header.tag or DEFAULT_TAG, digest=digest, size_bytes=size,
            arch=checked.arch, entrypoint=checked.entrypoint, format=fmt,
            created_at=now_ts(), entry_args=header.entry_args, cmd=header.cmd, env=header.env,
            workdir=header.workdir, source=header.source or fmt)
        revision = await self.ctx.store.images.put(image)
        await self._replicate(image)
        await self.ctx.store.events.record(
            "Image", f"{image.name}:{image.tag}", "Pushed",
            f"{digest[:19]} ({format_size(size)})")
        await self.ctx.store.cache.wait_for_revision(revision)
        return image

    async def _replicate(self, image: pb.Image) -> None:
        peers = self.ctx.images.peers
        if peers is None:
            return
        _copies, failed = await peers.replicate(image.digest, image.size_bytes)
        if failed:
            await self.ctx.store.events.record(
                "Image", f"{image.name}:{image.tag}", "ReplicationDelayed",
                f"{image.digest[:19]} not yet on every controller replica "
                f"({'; '.join(failed)[:300]}); they catch up in the background",
                warning=True)

    @map_errors
    async def TagImage(self, request: cpb.TagImageRequest, context: Context) -> pb.Image:
        source = await resolve(self.ctx.store, request.source)
        target = Reference.parse(request.target)
        if target.digest:
            raise InvalidArgument(f"tag target {shown(request.target)} must be NAME[:TAG], "
                                  "not a digest")
        image = pb.Image()
        image.CopyFrom(source)
        image.name, image.tag = target.name, target.tag
        image.created_at.CopyFrom(now_ts())
        revision = await self.ctx.store.images.tag(image)
        await self.ctx.store.events.record("Image", target.key, "Tagged",
                                           f"{source.name}:{source.tag} ({image.digest[:19]})")
        await self.ctx.store.cache.wait_for_revision(revision)
        return image

    @map_errors
    async def ListImages(
        self, request: cpb.ListImagesRequest, context: Context
    ) -> cpb.ListImagesResponse:
        # Tag records are read from this replica's watch-fed cache (they are few and small),
        # in (name, tag) order; the token is the one the other lists use.
        size = paging.page_size(request.page_size)
        cursor = paging.decode_token(request.page_token, "images", "")
        after = tuple(cursor.after.split(":", 1)) if cursor.after else None  # (name, tag)
        cache = self.ctx.store.cache
        records = sorted(cache.images.values(), key=lambda i: (i.name, i.tag))
        if after is not None:
            records = [i for i in records if (i.name, i.tag) > after]
        users = cache.image_users()
        out: list[pb.Image] = []
        total = 0
        for record in records:
            if len(out) == size or (out and total > PAGE_BYTES):
                break
            image = pb.Image()
            image.CopyFrom(record)
            image.used_by.extend(users.get(image.digest, [])[:MAX_USED_BY])
            total += image.ByteSize()
            out.append(image)
        more = len(out) < len(records)
        token = paging.encode_token("images", "", f"{out[-1].name}:{out[-1].tag}",
                                    max(cache.revision, 1)) if more else ""
        return cpb.ListImagesResponse(images=out, next_page_token=token)

    @map_errors
    async def DeleteImage(
        self, request: cpb.DeleteImageRequest, context: Context
    ) -> cpb.DeleteImageResponse:
        store = self.ctx.store
        records = await records_of(store, request.name)  # NOT_FOUND first
        deleted = {(r.name, r.tag) for r in records}
        # Content no other tag keeps: in use while partitions are pinned to it.
        kept = {i.digest for i in await store.images.read_all()
                if (i.name, i.tag) not in deleted}
        orphaned = {r.digest for r in records} - kept
        revisions = {d: await store.images.content_revision(d) for d in sorted(orphaned)}
        users = [sp.partition.name for sp in await store.partitions.read_all()
                 if sp.partition.spec.image_digest in orphaned]
        if users and not request.force:
            raise FailedPrecondition(
                f"image {request.name!r} is used by partitions: "
                f"{', '.join(sorted(users)[:10])}"
                + (f" and {len(users) - 10} more" if len(users) > 10 else "")
                + " (--force deletes it anyway; they keep running)")
        revision = await store.images.delete(records)
        if request.force:
            # Forced: the content goes now (partitions pinned to it would otherwise keep it
            # for the GC); unless a push of the same content re-recorded it meanwhile.
            for digest, rev in revisions.items():
                if rev:
                    revision = max(revision, await store.images.delete_content(
                        digest, rev, fenced=False))
        for r in records:
            await store.events.record(
                "Image", f"{r.name}:{r.tag}", "Deleted",
                f"{r.digest[:19]}" + (" (forced)" if request.force else ""))
        await store.cache.wait_for_revision(revision)
        return cpb.DeleteImageResponse()
