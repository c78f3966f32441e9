"""Public API: images (push as a client stream, list, delete)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unimplemented,
)
from controller.grpc_errors import Context, map_errors
from controller.images import CHUNK_BYTES, MAX_IMAGE_BYTES, check_image
from controller.scheduler.units import format_size
from controller.store import now_ts
from controller.validation import check_image_header


class ImagesApi:
    ctx: ApiContext

    @map_errors
    async def PushImage(
        self, request_iterator: AsyncIterator[cpb.PushImageRequest], context: Context
    ) -> pb.Image:
        header: cpb.ImageHeader | None = None
        parts: list[bytes] = []
        size = 0
        async for msg in request_iterator:
            if msg.HasField("header"):
                if header is not None:
                    raise InvalidArgument("the image header must be sent once, first")
                header = msg.header
                check_image_header(header.name, header.format, header.entrypoint,
                                   header.digest)
                if header.size_bytes > MAX_IMAGE_BYTES:
                    raise ResourceExhausted(
                        f"image of {format_size(header.size_bytes)} exceeds the "
                        f"{format_size(MAX_IMAGE_BYTES)} limit"
                    )
                continue
            if header is None:
                raise InvalidArgument("the first message must be the image header")
            size += len(msg.chunk)
            if size > MAX_IMAGE_BYTES:
                raise ResourceExhausted(f"image exceeds the {format_size(MAX_IMAGE_BYTES)} limit")
            parts.append(msg.chunk)
        if header is None:
            raise InvalidArgument("no image header received")
        content = b"".join(parts)
        if header.size_bytes and header.size_bytes != len(content):
            raise InvalidArgument(
                f"received {len(content)} bytes, the header announced {header.size_bytes}"
            )
        if not content:
            raise InvalidArgument("the image is empty")
        checked = check_image(header.name, header.format or "elf", header.entrypoint, content)
        if header.digest and header.digest != checked.digest:
            raise InvalidArgument(
                f"content digest {checked.digest} does not match the announced {header.digest}"
            )
        await self.ctx.store.images.put_blob(checked.digest, content, CHUNK_BYTES)
        image = pb.Image(
            name=header.name,
            digest=checked.digest,
            size_bytes=len(content),
            arch=checked.arch,
            entrypoint=checked.entrypoint,
            format=header.format or "elf",
            created_at=now_ts(),
        )
        await self.ctx.store.images.put(image, replace=True)
        await self.ctx.store.events.record(
            "Image", image.name, "Pushed", f"{checked.digest[:19]} ({format_size(len(content))})"
        )
        return image

    @map_errors
    async def ListImages(
        self, request: cpb.ListImagesRequest, context: Context
    ) -> cpb.ListImagesResponse:
        return cpb.ListImagesResponse(images=await self.ctx.store.images.read_all())

    @map_errors
    async def DeleteImage(
        self, request: cpb.DeleteImageRequest, context: Context
    ) -> cpb.DeleteImageResponse:
        await self.ctx.store.images.get(request.name)  # NOT_FOUND first
        users = [
            sp.partition.name
            for sp in await self.ctx.store.partitions.read_all()
            if sp.partition.spec.image == request.name
        ]
        if users:
            raise FailedPrecondition(
                f"image {request.name!r} is used by partitions: {', '.join(sorted(users)[:10])}"
            )
        await self.ctx.store.images.delete(request.name)
        await self.ctx.store.events.record("Image", request.name, "Deleted", "deleted")
        return cpb.DeleteImageResponse()

    @map_errors
    async def TagImage(self, request: cpb.TagImageRequest, context: Context) -> pb.Image:
        raise Unimplemented("image tags are not available yet")
