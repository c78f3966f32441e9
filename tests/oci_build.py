"""Build OCI image layouts (directories or tar archives) and `docker save` archives from layers
a test describes, for the unit and integration tests of `viridian image import`.

    layers = [[File("bin/app", ELF, mode=0o755), Dir("etc"), File("etc/old", b"x")],
              [Whiteout("etc/old"), Symlink("bin/sh", "app")]]
    write_oci_layout(tmp / "layout", Image(layers, entrypoint=["/bin/app"]))
    write_docker_save(tmp / "img.tar", Image(layers, tags=["app:1"]))

Layer tars are written to files (never whole in memory beyond one entry's data).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Dir", "Entry", "File", "Hardlink", "Image", "Opaque", "Raw", "Symlink",
           "Whiteout", "Fifo", "Device", "write_layer", "write_oci_layout", "write_oci_archive",
           "write_docker_save", "sha256_file"]


@dataclass(frozen=True)
class File:
    path: str
    data: bytes = b""
    mode: int = 0o644


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Hardlink:
    path: str
    target: str


@dataclass(frozen=True)
class Whiteout:
    """Hides ``path`` as the lower layers left it (written as ``dir/.wh.name``)."""

    path: str


@dataclass(frozen=True)
class Opaque:
    """Hides everything the lower layers put in directory ``path``."""

    path: str


@dataclass(frozen=True)
class Fifo:
    path: str


@dataclass(frozen=True)
class Device:
    path: str


@dataclass(frozen=True)
class Raw:
    """Any header as is (hostile names, types): ``data`` becomes the member's content."""

    info: tarfile.TarInfo
    data: bytes = b""


Entry = File | Dir | Symlink | Hardlink | Whiteout | Opaque | Fifo | Device | Raw


@dataclass
class Image:
    layers: Sequence[Sequence[Entry]]
    architecture: str = "amd64"
    os: str = "linux"
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] | None = None
    workdir: str | None = None
    gzip: bool = True
    tags: list[str] = field(default_factory=lambda: ["test:latest"])
    #: Replace the config's rootfs.diff_ids (to test a mismatch).
    diff_ids: list[str] | None = None
    #: Zero bytes after each layer's tar (a decompression bomb when gzip'd).
    padding: int = 0


def _info(entry: Entry) -> tuple[tarfile.TarInfo, bytes]:
    if isinstance(entry, Raw):
        return entry.info, entry.data
    if isinstance(entry, Whiteout):
        head, _, base = entry.path.rstrip("/").rpartition("/")
        info = tarfile.TarInfo(f"{head}/.wh.{base}" if head else f".wh.{base}")
        return info, b""
    if isinstance(entry, Opaque):
        return tarfile.TarInfo(entry.path.rstrip("/") + "/.wh..wh..opq"), b""
    info = tarfile.TarInfo(entry.path)
    data = b""
    if isinstance(entry, File):
        info.mode, data = entry.mode, entry.data
        info.size = len(data)
    elif isinstance(entry, Dir):
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
    elif isinstance(entry, Symlink):
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    elif isinstance(entry, Hardlink):
        info.type, info.linkname = tarfile.LNKTYPE, entry.target
    elif isinstance(entry, Fifo):
        info.type = tarfile.FIFOTYPE
    else:
        info.type = tarfile.CHRTYPE
        info.devmajor, info.devminor = 1, 3
    return info, data


def write_layer(entries: Sequence[Entry], dest: Path, *, compress: bool,
                padding: int = 0) -> tuple[str, str]:
    """Write one layer tar (gzip if ``compress``) to ``dest``, followed by ``padding`` zero
    bytes; returns (blob digest, diff id)."""
    plain = dest.with_name(dest.name + ".plain")
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info, data = _info(entry)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    with open(plain, "ab") as f:
        for _ in range(padding // (1 << 20)):
            f.write(bytes(1 << 20))
        f.write(bytes(padding % (1 << 20)))
    diff_id = sha256_file(plain)
    if compress:
        with open(plain, "rb") as src, gzip.open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
        plain.unlink()
    else:
        plain.replace(dest)
    return sha256_file(dest), diff_id


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _config(image: Image, diff_ids: list[str]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if image.entrypoint is not None:
        cfg["Entrypoint"] = image.entrypoint
    if image.cmd is not None:
        cfg["Cmd"] = image.cmd
    if image.env is not None:
        cfg["Env"] = image.env
    if image.workdir is not None:
        cfg["WorkingDir"] = image.workdir
    return {"architecture": image.architecture, "os": image.os, "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": image.diff_ids or diff_ids}}


def _put_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return "sha256:" + digest, len(data)


def _write_image_blobs(image: Image, blobs: Path) -> dict[str, Any]:
    """Layers, config and manifest of ``image`` into ``blobs`` (blobs/sha256); returns the
    manifest descriptor."""
    layers, diff_ids = [], []
    for entries in image.layers:
        tmp = blobs / ".layer"
        digest, diff_id = write_layer(entries, tmp, compress=image.gzip,
                                      padding=image.padding)
        tmp.replace(blobs / digest.split(":")[1])
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar"
                       + ("+gzip" if image.gzip else ""),
                       "digest": digest, "size": (blobs / digest.split(":")[1]).stat().st_size})
        diff_ids.append(diff_id)
    cdigest, csize = _put_blob(blobs, json.dumps(_config(image, diff_ids)).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cdigest, "size": csize},
                "layers": layers}
    mdigest, msize = _put_blob(blobs, json.dumps(manifest).encode())
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest,
            "size": msize,
            "platform": {"os": image.os, "architecture": image.architecture}}


def write_oci_layout(dest: Path, images: Image | Sequence[Image], *,
                     nested_index: bool = False, platforms: bool = True) -> Path:
    """An OCI image layout directory at ``dest``. Each image's first tag becomes its
    ``org.opencontainers.image.ref.name``; ``nested_index`` puts the manifests under one
    image index the top index points to (as multi-arch images are laid out)."""
    images = [images] if isinstance(images, Image) else list(images)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descriptors = []
    for image in images:
        desc = _write_image_blobs(image, blobs)
        if not platforms:
            del desc["platform"]
        if image.tags and not nested_index:
            desc["annotations"] = {"org.opencontainers.image.ref.name": image.tags[0]}
        descriptors.append(desc)
    if nested_index:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": descriptors}
        idigest, isize = _put_blob(blobs, json.dumps(index).encode())
        descriptors = [{"mediaType": "application/vnd.oci.image.index.v1+json",
                        "digest": idigest, "size": isize,
                        "annotations": {"org.opencontainers.image.ref.name":
                                        images[0].tags[0] if images[0].tags else "latest"}}]
    (dest / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": descriptors}))
    return dest


def _tar_tree(src: Path, dest: Path, *, compress: bool = False) -> None:
    with tarfile.open(dest, "w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(top, name)
                tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)


def write_oci_archive(dest: Path, images: Image | Sequence[Image], *, compress: bool = False,
                      **kw: Any) -> Path:
    """An OCI layout as one tar (``compress``: gzip) at ``dest``."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        layout = write_oci_layout(Path(tmp) / "layout", images, **kw)
        _tar_tree(layout, dest, compress=compress)
    return dest


def write_docker_save(dest: Path, images: Image | Sequence[Image]) -> Path:
    """A `docker save` archive (the classic layout: manifest.json, <hex>.json configs and
    <id>/layer.tar, uncompressed unless the image says gzip)."""
    images = [images] if isinstance(images, Image) else list(images)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        root = Path(tmp)
        manifest = []
        for image in images:
            names, diff_ids = [], []
            for entries in image.layers:
                tmp_layer = root / ".layer"
                _, diff_id = write_layer(entries, tmp_layer, compress=image.gzip,
                                         padding=image.padding)
                layer_dir = root / diff_id.split(":")[1]
                layer_dir.mkdir(exist_ok=True)
                tmp_layer.replace(layer_dir / "layer.tar")
                names.append(f"{layer_dir.name}/layer.tar")
                diff_ids.append(diff_id)
            config = json.dumps(_config(image, diff_ids)).encode()
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            (root / config_name).write_bytes(config)
            manifest.append({"Config": config_name, "RepoTags": image.tags, "Layers": names})
        (root / "manifest.json").write_text(json.dumps(manifest))
        _tar_tree(root, dest)
    return dest
