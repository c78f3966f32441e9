"""What `image push` and `image import` send: content prepared as a FILE (a directory is
tarred to a temporary file), hashed in a first pass and streamed to PushImage from the file
in CHUNK_SIZE pieces in a second, so no image is ever held whole in memory."""

from __future__ import annotations

import hashlib
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from viridian.v1 import controller_pb2, controller_pb2_grpc, types_pb2

from controller.cli.errors import CliError

__all__ = ["CHUNK_SIZE", "Payload", "file_digest", "prepare", "push_file", "requests",
           "tar_directory"]

CHUNK_SIZE = 1024 * 1024  # PushImage chunks are at most 1 MiB
ELF_MAGIC = b"\x7fELF"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")


@dataclass(frozen=True)
class Payload:
    """Content ready to stream: ``path`` holds exactly the bytes to send."""

    path: Path
    format: str        # "elf" or "tar"
    source: str        # "elf", "tar" or "directory"
    entrypoint: str
    size: int
    digest: str


def file_digest(path: Path) -> tuple[int, str]:
    """(size, "sha256:<hex>") of a file, read in CHUNK_SIZE pieces."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}") from None
    return size, "sha256:" + digest.hexdigest()


def tar_directory(root: Path, dest: Path) -> None:
    """Tar a directory into file ``dest`` the way the server's checker
    (node_agent.runtime.archive) accepts: no ownership, no setuid/setgid/sticky bits; a member
    it would refuse (a device node, a FIFO, a name too long) stops here with the same
    one-line reason."""
    from node_agent.runtime.archive import IMAGE_LIMITS, ArchiveError, Limits, packing_filter

    # The push size bound is the server's to enforce; here only the member rules matter.
    clean = packing_filter(Limits(max_members=IMAGE_LIMITS.max_members, max_bytes=1 << 62))
    try:
        with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(root.rglob("*")):
                tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False,
                        filter=clean)
    except ArchiveError as err:
        raise CliError(f"cannot push {root}: {err}") from None
    except OSError as err:
        raise CliError(f"cannot tar {root}: {err.strerror or err}") from None


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, mode="r:"):
            return True
    except (tarfile.TarError, OSError, EOFError):
        return False


@contextmanager
def prepare(path: Path, entrypoint: str | None) -> Iterator[Payload]:
    """PATH as an image: an ELF file, a tar file, or a directory (tarred to a temporary
    file that is removed afterwards)."""
    if path.is_dir():
        if not entrypoint:
            raise click.UsageError("a directory image needs --entrypoint /path/in/guest")
        with tempfile.TemporaryDirectory(prefix="viridian-push-") as tmp:
            tar_path = Path(tmp) / "image.tar"
            tar_directory(path, tar_path)
            size, digest = file_digest(tar_path)
            yield Payload(tar_path, "tar", "directory", entrypoint, size, digest)
        return
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}") from None
    if magic == ELF_MAGIC:
        if entrypoint:
            raise click.UsageError("--entrypoint applies only to tar images and directories")
        kind = "elf"
    elif path.name.endswith(_TAR_SUFFIXES) or _is_tar(path):
        if not entrypoint:
            raise click.UsageError("a tar image needs --entrypoint /path/in/guest")
        kind = "tar"
    else:
        raise CliError(f"{path} is not an ELF file, a .tar file or a directory")
    size, digest = file_digest(path)
    yield Payload(path, kind, kind, entrypoint or "", size, digest)


def requests(header: controller_pb2.ImageHeader, path: Path,
             on_chunk: Callable[[int], None] | None = None
             ) -> Iterator[controller_pb2.PushImageRequest]:
    """The PushImage stream: the header, then the file in chunks of at most CHUNK_SIZE."""
    yield controller_pb2.PushImageRequest(header=header)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            yield controller_pb2.PushImageRequest(chunk=chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))


def push_file(stub: controller_pb2_grpc.ControllerStub, header: controller_pb2.ImageHeader,
              path: Path, label: str) -> types_pb2.Image:
    """Stream ``path`` after ``header``, with a progress bar when stderr is a terminal."""
    if not sys.stderr.isatty():
        result: types_pb2.Image = stub.PushImage(requests(header, path))
        return result
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(f"pushing {label}", total=header.size_bytes)
        result = stub.PushImage(requests(header, path, lambda n: progress.advance(task, n)))
    return result
