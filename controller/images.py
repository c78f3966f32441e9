"""Image content checks: a pushed image must be a static x86_64/i386 ELF, or a tar whose
entrypoint is one. The ELF rules are the runtime's own (node_agent.runtime.loader), and so
are the tar rules (node_agent.runtime.archive): push and node can never disagree."""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from viridian.v1 import types_pb2 as pb

from controller.errors import InvalidArgument

MAX_IMAGE_BYTES = 256 << 20
CHUNK_BYTES = 1 << 20  # below etcd's 1.5 MiB request limit
ARCHES: dict[str, pb.Arch.ValueType] = {"x86_64": pb.ARCH_X86_64, "i386": pb.ARCH_I386}


#: Scripts an entrypoint may chain through before an ELF (as the runtime's loader allows).
MAX_SCRIPTS = 4


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
            raise InvalidArgument(f"{what} is not an x86 ELF executable: {err}") from err
    return ARCHES[arch]


def check_image(name: str, fmt: str, entrypoint: str, content: bytes) -> CheckedImage:
    """Validate pushed content; returns its digest, arch and entrypoint.

    A tar goes through the node's own checker (node_agent.runtime.archive.validate, the dry
    run of what a node unpacks), so an image a node would refuse is refused here, at push,
    with one line naming the member. The entrypoint is looked up in that member table,
    following the archive's symlinks as the guest sandbox does."""
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    if fmt == "elf":
        return CheckedImage(digest, _elf_arch(content, f"image {name!r}"), f"/bin/{name}")
    if fmt != "tar":
        raise InvalidArgument(f"unknown image format {fmt!r}: use elf or tar")
    from node_agent.runtime.archive import IMAGE_LIMITS, ArchiveError, read_file, validate

    path = PurePosixPath(entrypoint)
    if (not entrypoint or not path.is_absolute() or ".." in path.parts
            or "\0" in entrypoint or len(entrypoint.encode(errors="replace")) > 4095):
        raise InvalidArgument("a tar image needs an absolute --entrypoint inside it")
    shown = repr(entrypoint) if len(entrypoint) <= 200 else repr(entrypoint[:200] + "...")
    try:
        table = validate(io.BytesIO(content), IMAGE_LIMITS)
        program, what = entrypoint, f"entrypoint {shown}"
        # A #! script runs through its interpreter (as execve does, up to 4 scripts deep):
        # the architecture is the first ELF's in that chain.
        for _depth in range(MAX_SCRIPTS + 1):
            member = table.regular_file(program)
            if member is None:
                raise InvalidArgument(f"{what} is not a regular file in the tar")
            body = read_file(io.BytesIO(content), member, IMAGE_LIMITS)
            if not body.startswith(b"#!"):
                return CheckedImage(digest, _elf_arch(body, what), entrypoint)
            words = body[2:256].split(b"\n", 1)[0].split()
            if not words or not words[0].startswith(b"/"):
                raise InvalidArgument(f"{what} is a script without an absolute interpreter")
            program = words[0].decode("utf-8", "replace")
            what = f"the interpreter {program!r} of entrypoint {shown}"
    except ArchiveError as err:
        raise InvalidArgument(f"image {name!r} refused: {err}") from None
    raise InvalidArgument(f"entrypoint {shown} names more than {MAX_SCRIPTS} scripts in a "
                          "chain")
