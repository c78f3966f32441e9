"""Image commands: push (streamed from a file, with progress), import (OCI / docker save),
tag, ls (paged) and rm."""

from __future__ import annotations

from pathlib import Path

import click
from viridian.v1 import controller_pb2, controller_pb2_grpc, types_pb2

from controller.cli.app import get_client
from controller.cli.completion import image_names
from controller.cli.errors import CliError
from controller.cli.image_import import import_cmd
from controller.cli.image_ref import parse_ref
from controller.cli.image_upload import CHUNK_SIZE, prepare, push_file
from controller.cli.output import Column, age, arch_name, render_list
from controller.cli.params import output_option
from controller.cli.sizes import format_size

__all__ = ["CHUNK_SIZE", "COMMANDS", "IMAGE_COLUMNS", "list_images", "short_digest"]

#: Pages asked of ListImages (0 would be the server's default; explicit keeps pages small).
PAGE_SIZE = 500


def short_digest(digest: str) -> str:
    return digest[7:19] if digest.startswith("sha256:") else digest[:19]


def _users(image: types_pb2.Image) -> str:
    users = list(image.used_by)
    if not users:
        return "-"
    shown = ",".join(users[:3])
    return shown + (f",+{len(users) - 3}" if len(users) > 3 else "")


Img = types_pb2.Image

IMAGE_COLUMNS: list[Column[Img]] = [
    Column("NAME", lambda i: i.name),
    Column("TAG", lambda i: i.tag or "latest"),
    Column("ARCH", lambda i: arch_name(i.arch)),
    Column("SIZE", lambda i: format_size(i.size_bytes)),
    Column("DIGEST", lambda i: short_digest(i.digest)),
    Column("USERS", _users),
    Column("AGE", lambda i: age(i.created_at)),
    Column("FORMAT", lambda i: i.format, wide=True),
    Column("SOURCE", lambda i: i.source or "-", wide=True),
    Column("ENTRYPOINT", lambda i: i.entrypoint or "-", wide=True),
    Column("FULL DIGEST", lambda i: i.digest, wide=True),
]


def list_images(stub: controller_pb2_grpc.ControllerStub) -> list[Img]:
    """Every image, following next_page_token to the last page."""
    images: list[Img] = []
    token = ""
    seen: set[str] = set()
    while True:
        reply = stub.ListImages(controller_pb2.ListImagesRequest(page_size=PAGE_SIZE,
                                                                 page_token=token))
        images.extend(reply.images)
        token = reply.next_page_token
        if not token:
            return images
        if token in seen:
            raise CliError("the controller repeated a page token while listing images")
        seen.add(token)


@click.group("image")
def image_group() -> None:
    """Push, import, tag, list and remove guest images."""


@image_group.command("push")
@click.argument("reference", metavar="NAME[:TAG]")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--entrypoint", help="For a tar image or a directory: guest path of the ELF.")
@click.pass_context
def push_cmd(ctx: click.Context, reference: str, path: Path, entrypoint: str | None) -> None:
    """Upload PATH (an ELF file, a .tar, or a directory) as image NAME[:TAG] (tag: latest).

    The content is streamed from disk (a directory is tarred to a temporary file first)."""
    ref = parse_ref(reference, allow_digest=False)
    stub = get_client(ctx).stub
    with prepare(path, entrypoint) as payload:
        header = controller_pb2.ImageHeader(
            name=ref.name, tag=ref.tag, format=payload.format, entrypoint=payload.entrypoint,
            size_bytes=payload.size, digest=payload.digest, source=payload.source)
        result = push_file(stub, header, payload.path, str(ref))
    shown = f"{result.name}:{result.tag or ref.tag or 'latest'}"
    click.echo(
        f"image {shown} pushed: {result.format}, {arch_name(result.arch)}, "
        f"{format_size(result.size_bytes)}, {result.digest}"
    )


@image_group.command("tag")
@click.argument("source", metavar="SOURCE")
@click.argument("target", metavar="TARGET")
@click.pass_context
def tag_cmd(ctx: click.Context, source: str, target: str) -> None:
    """Point TARGET (NAME[:TAG]) at the content SOURCE names (NAME[:TAG] or NAME@sha256:...).

    An existing TARGET is replaced."""
    parse_ref(source, what="source")
    dest = parse_ref(target, allow_digest=False, what="target")
    result = get_client(ctx).stub.TagImage(
        controller_pb2.TagImageRequest(source=source, target=target))
    click.echo(f"image {result.name}:{result.tag or dest.tag or 'latest'} tagged from "
               f"{source} ({short_digest(result.digest)})")


@image_group.command("ls")
@output_option
@click.pass_context
def ls_cmd(ctx: click.Context, output: str) -> None:
    """List images: one line per tag, with the partitions using each."""
    click.echo(render_list(list_images(get_client(ctx).stub), IMAGE_COLUMNS, output))


@image_group.command("rm")
@click.argument("reference", metavar="REF", shell_complete=image_names)
@click.option("--force", is_flag=True,
              help="Delete even if partitions use it (they keep running; restarting one on a "
              "node without the content fails).")
@click.pass_context
def rm_cmd(ctx: click.Context, reference: str, force: bool) -> None:
    """Delete image REF: NAME[:TAG], or NAME@sha256:... for every tag of that content.

    Refused while a partition uses it, unless --force."""
    parse_ref(reference)
    get_client(ctx).stub.DeleteImage(
        controller_pb2.DeleteImageRequest(name=reference, force=force))
    click.echo(f"image {reference} deleted")


image_group.add_command(import_cmd)

COMMANDS = [image_group]
