"""Image content checks: a pushed image must be a static x86_64/i386 ELF, or a tar whose
entrypoint is one. The ELF rules are the runtime's own (node_agent.runtime.loader), and so
are the tar rules (node_agent.runtime.archive): push and node can never disagree.

Content is checked from a file on disk (the push's spool), read as a stream: an image of
gigabytes is never held in memory. Blocking: callers run it in a thread."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from viridian.v1 import types_pb2 as pb

from controller.errors import InvalidArgument

MAX_IMAGE_BYTES = 8 << 30
CHUNK_BYTES = 1 << 20  # what a pull sends per message
ARCHES: dict[str, pb.Arch.ValueType] = {"x86_64": pb.ARCH_X86_64, "i386": pb.ARCH_I386}
#: An entrypoint read whole to learn its architecture: an ELF header and program headers
#: are all that matter, but the runtime's reader wants a file; larger ones are refused.
MAX_ENTRYPOINT_BYTES = 1 << 30


#: Scripts an entrypoint may chain through before an ELF (as the runtime's loader allows).
MAX_SCRIPTS = 4


@dataclass(frozen=True)
class CheckedImage:
    arch: pb.Arch.ValueType
    entrypoint: str


def _elf_arch(path: Path, what: str) -> pb.Arch.ValueType:
    from node_agent.runtime.loader import validate_image
    from node_agent.runtime.spec import ImageError

    try:
        arch = validate_image(path)
    except ImageError as err:
        raise InvalidArgument(f"{what} is not an x86 ELF executable: {err}") from err
    return ARCHES[arch]


def _elf_arch_of(body: bytes, what: str) -> pb.Arch.ValueType:
    with tempfile.NamedTemporaryFile(prefix="viridian-image-") as tmp:
        tmp.write(body)
        tmp.flush()
        return _elf_arch(Path(tmp.name), what)


def check_image(name: str, fmt: str, entrypoint: str, path: Path) -> CheckedImage:
    """Validate pushed content stored at `path`; returns its arch and entrypoint.

    A tar goes through the node's own checker (node_agent.runtime.archive.validate, the dry
    run of what a node unpacks), so an image a node would refuse is refused here, at push,
    with one line naming the member. The entrypoint is looked up in that member table,
    following the archive's symlinks as the guest sandbox does."""
    if fmt == "elf":
        return CheckedImage(_elf_arch(path, f"image {name!r}"), f"/bin/{name}")
    if fmt != "tar":
        raise InvalidArgument(f"unknown image format {fmt!r}: use elf or tar")
    from node_agent.runtime.archive import IMAGE_LIMITS, ArchiveError, read_file, validate

    pure = PurePosixPath(entrypoint)
    if (not entrypoint or not pure.is_absolute() or ".." in pure.parts
            or "\0" in entrypoint or len(entrypoint.encode(errors="replace")) > 4095):
        raise InvalidArgument("a tar image needs an absolute --entrypoint inside it")
    shown = repr(entrypoint) if len(entrypoint) <= 200 else repr(entrypoint[:200] + "...")
    try:
        with path.open("rb") as src:
            table = validate(src, IMAGE_LIMITS)
            program, what = entrypoint, f"entrypoint {shown}"
            # A #! script runs through its interpreter (as execve does, up to 4 scripts
            # deep): the architecture is the first ELF's in that chain.
            for _depth in range(MAX_SCRIPTS + 1):
                member = table.regular_file(program)
                if member is None:
                    raise InvalidArgument(f"{what} is not a regular file in the tar")
                if member.size > MAX_ENTRYPOINT_BYTES:
                    raise InvalidArgument(f"{what} is larger than 1 GiB")
                src.seek(0)
                body = read_file(src, member, IMAGE_LIMITS)
                if not body.startswith(b"#!"):
                    return CheckedImage(_elf_arch_of(body, what), entrypoint)
                words = body[2:256].split(b"\n", 1)[0].split()
                if not words or not words[0].startswith(b"/"):
                    raise InvalidArgument(f"{what} is a script without an absolute interpreter")
                program = words[0].decode("utf-8", "replace")
                what = f"the interpreter {program!r} of entrypoint {shown}"
    except ArchiveError as err:
        raise InvalidArgument(f"image {name!r} refused: {err}") from None
    raise InvalidArgument(f"entrypoint {shown} names more than {MAX_SCRIPTS} scripts in a "
                          "chain")
