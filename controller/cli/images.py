"""Image commands: push (client-streaming upload with progress), ls, rm."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
from viridian.v1 import controller_pb2, types_pb2

from controller.cli.app import get_client
from controller.cli.errors import CliError
from controller.cli.output import Column, age, arch_name, render_list
from controller.cli.params import output_option
from controller.cli.sizes import format_size

__all__ = ["CHUNK_SIZE", "COMMANDS", "IMAGE_COLUMNS", "ImageContent", "load_image", "requests"]

CHUNK_SIZE = 1024 * 1024  # PushImage chunks are at most 1 MiB
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class ImageContent:
    format: str  # "elf" or "tar"
    data: bytes
    entrypoint: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


def _tar_directory(root: Path) -> bytes:
    """Tar a directory the way the server's checker (node_agent.runtime.archive) accepts:
    no ownership, no setuid/setgid/sticky bits; a member it would refuse (a device node, a
    FIFO, a name too long) stops the push here with the same one-line reason."""
    from node_agent.runtime.archive import IMAGE_LIMITS, ArchiveError, packing_filter

    clean = packing_filter(IMAGE_LIMITS)

    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(root.rglob("*")):
                tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False,
                        filter=clean)
    except ArchiveError as err:
        raise CliError(f"cannot push {root}: {err}") from None
    return buffer.getvalue()


def load_image(path: Path, entrypoint: str | None) -> ImageContent:
    """Read PATH as an image: an ELF file, a .tar file, or a directory (tarred here)."""
    if path.is_dir():
        if not entrypoint:
            raise click.UsageError("a directory image needs --entrypoint /path/in/guest")
        return ImageContent("tar", _tar_directory(path), entrypoint)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}") from None
    if data.startswith(ELF_MAGIC):
        if entrypoint:
            raise click.UsageError("--entrypoint applies only to tar images and directories")
        return ImageContent("elf", data, "")
    if path.suffix == ".tar" or _is_tar(data):
        if not entrypoint:
            raise click.UsageError("a tar image needs --entrypoint /path/in/guest")
        return ImageContent("tar", data, entrypoint)
    raise CliError(f"{path} is not an ELF file, a .tar file or a directory")


def _is_tar(data: bytes) -> bool:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:"):
            return True
    except tarfile.TarError:
        return False


def requests(
    name: str, image: ImageContent, on_chunk: Callable[[int], None] | None = None
) -> Iterator[controller_pb2.PushImageRequest]:
    """The PushImage stream: the header, then chunks of at most CHUNK_SIZE bytes."""
    yield controller_pb2.PushImageRequest(
        header=controller_pb2.ImageHeader(
            name=name,
            format=image.format,
            entrypoint=image.entrypoint,
            size_bytes=len(image.data),
            digest=image.digest,
        )
    )
    view = memoryview(image.data)
    for start in range(0, len(view), CHUNK_SIZE):
        chunk = bytes(view[start : start + CHUNK_SIZE])
        yield controller_pb2.PushImageRequest(chunk=chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))


Img = types_pb2.Image

IMAGE_COLUMNS: list[Column[Img]] = [
    Column("NAME", lambda i: i.name),
    Column("FORMAT", lambda i: i.format),
    Column("ARCH", lambda i: arch_name(i.arch)),
    Column("SIZE", lambda i: format_size(i.size_bytes)),
    Column("DIGEST", lambda i: i.digest[:19] if not i.digest.startswith("sha256:")
           else i.digest[7:19]),
    Column("AGE", lambda i: age(i.created_at)),
    Column("ENTRYPOINT", lambda i: i.entrypoint or "-", wide=True),
    Column("FULL DIGEST", lambda i: i.digest, wide=True),
]


@click.group("image")
def image_group() -> None:
    """Push, list and remove guest images."""


@image_group.command("push")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--entrypoint", help="For a tar image or a directory: guest path of the ELF.")
@click.pass_context
def push_cmd(ctx: click.Context, name: str, path: Path, entrypoint: str | None) -> None:
    """Upload PATH (an ELF file, a .tar, or a directory) as image NAME."""
    image = load_image(path, entrypoint)
    stub = get_client(ctx).stub
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task(f"pushing {name}", total=len(image.data))
            result = stub.PushImage(
                requests(name, image, lambda n: progress.advance(task, n)))
    else:
        result = stub.PushImage(requests(name, image))
    click.echo(
        f"image {result.name} pushed: {result.format}, {arch_name(result.arch)}, "
        f"{format_size(result.size_bytes)}, {result.digest}"
    )


@image_group.command("ls")
@output_option
@click.pass_context
def ls_cmd(ctx: click.Context, output: str) -> None:
    """List images."""
    reply = get_client(ctx).stub.ListImages(controller_pb2.ListImagesRequest())
    click.echo(render_list(list(reply.images), IMAGE_COLUMNS, output))


@image_group.command("rm")
@click.argument("name")
@click.pass_context
def rm_cmd(ctx: click.Context, name: str) -> None:
    """Delete an image (refused while a partition uses it)."""
    get_client(ctx).stub.DeleteImage(controller_pb2.DeleteImageRequest(name=name))
    click.echo(f"image {name} deleted")


COMMANDS = [image_group]
