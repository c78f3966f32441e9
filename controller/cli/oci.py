"""Import an OCI image layout (a directory or a tar of one) or a `docker save` archive as ONE
root-filesystem tar that `viridian image push` can send.

Every byte of the input is treated as hostile.

How: each layer is streamed (compressed bytes hashed, then decompressed and hashed again for
its diff id) through the tar member rules of ``node_agent.runtime.archive`` (one
``MemberChecker`` per layer: names, ``..``, absolute names, parents inside the layer, hard-link
targets, member types) and applied straight into one scratch root directory, with
openat-style calls that never follow anything on disk:

* ``.wh.NAME`` removes NAME as the lower layers left it; ``.wh..wh..opq`` empties a directory
  of everything the lower layers put there (what this layer writes stays);
* an entry replaces what lower layers had at its path (a directory over a directory merges);
* a member whose parent is, in the lower layers, a symlink or a file is refused: writing it
  would go through a link or silently turn a file into a directory;
* a hard link may name a file of this layer or of a lower one, always inside the root;
* device nodes and FIFOs are skipped, setuid/setgid bits dropped (each with a note), since
  the guest runtime refuses them and images routinely carry them (/dev, su, passwd).

The merged directory is then tarred once (through the same ``packing_filter`` a pushed
directory uses), so the output is exactly what the push checker accepts. Applying layers to a
directory rather than merging tar streams keeps whiteouts, opaque directories and cross-layer
hard links simple and obviously right; the price is the root on disk once, next to ``dest``.

Digests: each blob read through a descriptor is checked against its sha256 (and size); a
layer's uncompressed digest is checked against the config's ``rootfs.diff_ids``. A mismatch
fails the import (the scratch root and ``dest`` are removed).

Modules: ``oci_layout`` reads the layout or archive and picks the image, ``oci_layers``
applies the layers and writes the tar, this one ties them together and reads the config.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.cli.oci_layers import DIR_FLAGS, Root, apply_layer, write_tar
from controller.cli.oci_layout import (
    ARCHES,
    Chosen,
    DirSource,
    ImportLimits,
    OciError,
    Source,
    TarSource,
    arch_of,
    pick_docker,
    pick_oci,
    show,
    strings,
)
from node_agent.runtime.archive import ArchiveError, is_regular_file

__all__ = ["ARCHES", "ImportLimits", "ImportedImage", "OciError", "arch_of", "import_image"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImportedImage:
    """What the image config says, and what to push: ``program`` (absolute guest path of
    ``argv[0]``), ``entry_args`` (fixed arguments) and ``default_args`` (replaceable)."""

    source: str                      # "oci" or "docker"
    arch: str                        # "x86_64" or "i386"
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    working_dir: str
    argv: list[str]
    program: str
    entry_args: list[str]
    default_args: list[str]
    size_bytes: int                  # of the output tar
    layers: int
    notes: list[str] = field(default_factory=list)


# -- the program --------------------------------------------------------------------------
def _env_path(env: list[str]) -> str:
    for item in reversed(env):
        if item.startswith("PATH="):
            return item[5:]
    return DEFAULT_PATH


def _find_program(root_fd: int, name: str, env: list[str]) -> str:
    if "/" in name:
        if not name.startswith("/"):
            raise OciError(f"entrypoint {show(name)} is neither absolute nor a bare name "
                           "found on PATH")
        if not is_regular_file(root_fd, name):
            raise OciError(f"entrypoint {show(name)} is not a file in the image")
        return name
    if not name:
        raise OciError("the image's entrypoint is empty")
    for directory in _env_path(env).split(":"):
        if directory.startswith("/"):
            candidate = posixpath.join(directory, name)
            if is_regular_file(root_fd, candidate):
                return candidate
    raise OciError(f"entrypoint {show(name)} is not found on the image's PATH")


# -- the entry point ----------------------------------------------------------------------
def import_image(source: Path, dest: Path, *, arch: str | None, ref: str | None,
                 limits: ImportLimits | None = None,
                 entrypoint: str | None = None) -> ImportedImage:
    """Build ``dest`` (a root-filesystem tar) from the image at ``source``.

    ``arch`` ("x86_64"/"amd64"/"i386"/"386") and ``ref`` pick among several images;
    ``entrypoint`` replaces the image's Entrypoint and Cmd (as `docker run --entrypoint`).
    """
    limits = limits or ImportLimits()
    want_arch = arch_of(arch) if arch else None
    dest_dir = dest.parent if str(dest.parent) else Path(".")
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".viridian-import-") as tmp:
        scratch = Path(tmp)
        src: Source
        if source.is_dir():
            src = DirSource(source)
        elif source.is_file():
            src = TarSource(source, scratch, limits)
        else:
            raise OciError(f"{source} is neither a directory nor a file")
        try:
            if src.exists("index.json"):
                kind = "oci"
                chosen = pick_oci(src, want_arch, ref, limits)
            elif src.exists("manifest.json"):
                kind = "docker"
                chosen = pick_docker(src, want_arch, ref, limits)
            else:
                raise OciError("neither an OCI image layout (no index.json) nor a docker "
                               "save archive (no manifest.json); a plain root filesystem is "
                               "pushed with `viridian image push`")
            if len(chosen.layers) > limits.max_layers:
                raise OciError(f"the image has more than {limits.max_layers} layers")
            rootdir = scratch / "root"
            rootdir.mkdir(mode=0o700)
            root_fd = os.open(rootdir, DIR_FLAGS)
            try:
                root = Root(root_fd, limits)
                for i, layer in enumerate(chosen.layers):
                    apply_layer(root, src, i, layer, chosen.diff_ids[i], limits)
                image = _describe(chosen, kind, root_fd, entrypoint)
            finally:
                os.close(root_fd)
        finally:
            src.close()
        notes = list(chosen.notes)
        if root.devices:
            notes.append(f"skipped {root.devices} device node(s) (the guest has its own /dev)")
        if root.fifos:
            notes.append(f"skipped {root.fifos} FIFO(s)")
        if root.setid:
            notes.append(f"dropped setuid/setgid bits from {root.setid} file(s)")
        try:
            write_tar(rootdir, dest, limits, root.mtimes)
        except (ArchiveError, OSError) as err:
            with suppress(OSError):
                dest.unlink()
            raise OciError(f"cannot write the root tar: {err}") from None
    return ImportedImage(**{**image, "size_bytes": dest.stat().st_size, "notes": notes,
                            "layers": len(chosen.layers)})


def _describe(chosen: Chosen, kind: str, root_fd: int, override: str | None) -> dict[str, Any]:
    cfg = chosen.config.get("config") or {}
    if not isinstance(cfg, dict):
        raise OciError("image config: config is not an object")
    entry = strings(cfg.get("Entrypoint"), "Entrypoint")
    cmd = strings(cfg.get("Cmd"), "Cmd")
    env = strings(cfg.get("Env"), "Env")
    workdir = cfg.get("WorkingDir") or ""
    if not isinstance(workdir, str) or "\0" in workdir:
        raise OciError("image config: WorkingDir is not a path")
    if workdir and not workdir.startswith("/"):
        workdir = "/" + workdir
    if override is not None:
        argv, entry_args, default_args = [override], [], []
    elif entry:
        argv, entry_args, default_args = entry + cmd, entry[1:], cmd
    elif cmd:
        argv, entry_args, default_args = list(cmd), [], cmd[1:]
    else:
        raise OciError("the image sets neither Entrypoint nor Cmd: give --entrypoint")
    program = _find_program(root_fd, argv[0], env)
    return {"source": kind, "arch": chosen.arch, "entrypoint": entry, "cmd": cmd, "env": env,
            "working_dir": workdir, "argv": argv, "program": program,
            "entry_args": entry_args, "default_args": default_args}

