"""From a reference (NAME[:TAG] or NAME@sha256:HEX) to the tag record it names."""

from __future__ import annotations

from viridian.v1 import types_pb2 as pb

from controller.errors import NotFound
from controller.images.refs import Reference
from controller.store import Store


async def resolve(store: Store, text: str) -> pb.Image:
    """The tag record `text` names (for a digest reference: a tag of NAME with that content);
    NOT_FOUND otherwise, INVALID_ARGUMENT for a malformed reference."""
    ref = Reference.parse(text)
    if ref.digest:
        for image in await store.images.of_name(ref.name):
            if image.digest == ref.digest:
                return image
        raise NotFound(f"image {text!r} not found")
    cached = store.cache.images.get(ref.key)
    if cached is not None:
        return cached
    try:
        return await store.images.get(ref.name, ref.tag)
    except NotFound:
        raise NotFound(f"image {text!r} not found") from None


async def records_of(store: Store, text: str) -> list[pb.Image]:
    """The tag records a reference names: one for NAME[:TAG], every tag of NAME with that
    content for NAME@sha256:HEX."""
    ref = Reference.parse(text)
    if not ref.digest:
        return [await resolve(store, text)]
    found = [i for i in await store.images.of_name(ref.name) if i.digest == ref.digest]
    if not found:
        raise NotFound(f"image {text!r} not found")
    return found
