"""Image content checks: a pushed image must be a static x86_64/i386 ELF, or a tar whose
entrypoint is one. The ELF rules are the runtime's own (node_agent.runtime.loader)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from viridian.v1 import types_pb2 as pb

from controller.errors import InvalidArgument

MAX_IMAGE_BYTES = 256 << 20
CHUNK_BYTES = 1 << 20  # below etcd's 1.5 MiB request limit
ARCHES: dict[str, pb.Arch.ValueType] = {"x86_64": pb.ARCH_X86_64, "i386": pb.ARCH_I386}


@dataclass(frozen=True)
class CheckedImage:
    digest: str
    arch: pb.Arch.ValueType
    entrypoint: str


def _elf_arch(content: bytes, what: str) -> pb.Arch.ValueType:
    from node_agent.runtime.loader import validate_image
    from node_agent.runtime.spec import ImageError

    with tempfile.NamedTemporaryFile(prefix="viridian-image-") as tmp:
        tmp.write(content)
        tmp.flush()
        try:
            arch = validate_image(Path(tmp.name))
        except ImageError as err:
            raise InvalidArgument(f"{what} is not a static x86 ELF: {err}") from err
    return ARCHES[arch]


def check_image(name: str, fmt: str, entrypoint: str, content: bytes) -> CheckedImage:
    """Validate pushed content; returns its digest, arch and entrypoint."""
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    if fmt == "elf":
        return CheckedImage(digest, _elf_arch(content, f"image {name!r}"), f"/bin/{name}")
    if fmt != "tar":
        raise InvalidArgument(f"unknown image format {fmt!r}: use elf or tar")
    path = PurePosixPath(entrypoint)
    if not entrypoint or not path.is_absolute() or ".." in path.parts:
        raise InvalidArgument("a tar image needs an absolute --entrypoint inside it")
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:*") as tar:
            member = _find(tar, path)
            if member is None:
                raise InvalidArgument(f"entrypoint {entrypoint} is not a file in the tar")
            extracted = tar.extractfile(member)
            if extracted is None:
                raise InvalidArgument(f"entrypoint {entrypoint} is not a regular file")
            elf = extracted.read()
    except tarfile.TarError as err:
        raise InvalidArgument(f"image {name!r} is not a valid tar archive: {err}") from err
    return CheckedImage(digest, _elf_arch(elf, f"entrypoint {entrypoint}"), entrypoint)


def _find(tar: tarfile.TarFile, path: PurePosixPath) -> tarfile.TarInfo | None:
    wanted = str(path).lstrip("/")
    for member in tar.getmembers():
        if member.name.removeprefix("./").lstrip("/") == wanted and member.isfile():
            return member
    return None
