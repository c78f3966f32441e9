"""`viridian image import PATH NAME[:TAG]`: an OCI image layout (directory or tar) or a
`docker save` archive, flattened to one root-filesystem tar (controller.cli.oci) in a
temporary directory and pushed with the config's entrypoint, arguments, env and workdir."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from viridian.v1 import controller_pb2

from controller.cli.errors import CliError
from controller.cli.image_ref import parse_ref
from controller.cli.image_upload import file_digest, push_file
from controller.cli.oci import OciError, import_image
from controller.cli.output import arch_name, terminal_text
from controller.cli.sizes import format_size

__all__ = ["import_cmd"]


@click.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.argument("reference", metavar="NAME[:TAG]")
@click.option("--arch", metavar="ARCH",
              help="Which variant of a multi-architecture image: x86_64 (amd64) or i386 "
              "(386). Default: x86_64 if present, else the only one.")
@click.option("--ref", "image_ref", metavar="REF",
              help="Which image of a layout or archive holding several: its "
              "org.opencontainers.image.ref.name or docker tag (e.g. busybox:1.36).")
@click.option("--entrypoint", metavar="PROGRAM",
              help="Run PROGRAM instead of the image's Entrypoint/Cmd (an absolute guest "
              "path, or a name looked up on the image's PATH).")
@click.pass_context
def import_cmd(ctx: click.Context, path: Path, reference: str, arch: str | None,
               image_ref: str | None, entrypoint: str | None) -> None:
    """Import an OCI image layout (directory or .tar) or a `docker save` archive at PATH as
    image NAME[:TAG].

    Layers are applied in order (whiteouts honoured) into one root filesystem; its
    Entrypoint, Cmd, Env and WorkingDir become the image's defaults (`create --entrypoint`,
    `--workdir`, `--env` and arguments after `--` override them). The root is built in a
    temporary directory ($TMPDIR) before being streamed to the controller."""
    from controller.cli.app import get_client

    ref = parse_ref(reference, allow_digest=False)
    stub = get_client(ctx).stub
    with tempfile.TemporaryDirectory(prefix="viridian-import-") as tmp:
        tar_path = Path(tmp) / "root.tar"
        try:
            image = import_image(path, tar_path, arch=arch, ref=image_ref,
                                 entrypoint=entrypoint)
        except OciError as err:
            raise CliError(f"cannot import {path.name}: {err}") from None
        for note in image.notes:
            click.echo(f"note: {note}", err=True)
        size, digest = file_digest(tar_path)
        header = controller_pb2.ImageHeader(
            name=ref.name, tag=ref.tag, format="tar", entrypoint=image.program,
            size_bytes=size, digest=digest, entry_args=image.entry_args,
            cmd=image.default_args, env=image.env, workdir=image.working_dir,
            source=image.source)
        result = push_file(stub, header, tar_path, str(ref))
    click.echo(
        f"image {result.name}:{result.tag or ref.tag or 'latest'} imported from "
        f"{image.source} ({image.layers} layer(s)): {arch_name(result.arch)}, "
        f"{format_size(result.size_bytes)}, {result.digest}; runs "
        f"{terminal_text(' '.join([image.program, *image.entry_args, *image.default_args]))}"
    )
