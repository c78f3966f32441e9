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
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

from node_agent.runtime.archive import (
    ArchiveError,
    Limits,
    MemberChecker,
    is_regular_file,
    packing_filter,
    split_name,
)

__all__ = ["ImportLimits", "ImportedImage", "OciError", "import_image", "ARCHES"]

#: OCI architecture names Viridian runs, and the name Viridian gives them.
ARCHES = {"amd64": "x86_64", "386": "i386"}
_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "386": "i386", "i386": "i386"}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "sha512": re.compile(r"[0-9a-f]{128}")}
_INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json"}
_MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                   "application/vnd.docker.distribution.manifest.v2+json"}


class OciError(Exception):
    """A refused or unreadable image; the message is one line."""


@dataclass(frozen=True)
class ImportLimits:
    """Bounds on one import."""

    max_bytes: int = 8 << 30         # the root's files, summed over every layer written
    max_layer_bytes: int = 9 << 30   # one layer's uncompressed tar stream (headers, padding)
    max_members: int = 1_000_000     # layer entries, summed over layers
    max_layers: int = 256
    max_json: int = 4 << 20          # index, manifest and config documents
    max_archive_members: int = 100_000  # entries of an input archive (blobs, json files)


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


def _names(names: list[str]) -> str:
    """Names from the image for a message: printable ones as they are, others quoted;
    at most ten."""
    shown = [n if n.isprintable() and len(n) <= 96 else _show(n) for n in names[:10]]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


def _show(text: str) -> str:
    if len(text) > 96:
        text = text[:64] + "..." + text[-24:]
    return repr(text)


# -- where the input's files are ----------------------------------------------------------
class _Source(Protocol):
    def exists(self, name: str) -> bool: ...
    def open(self, name: str) -> IO[bytes]: ...
    def close(self) -> None: ...


def _parts(name: str) -> list[str]:
    try:
        parts = split_name(name, f"file {_show(name)}")
    except ArchiveError as err:
        raise OciError(str(err)) from None
    if not parts:
        raise OciError(f"file {_show(name)}: names the image's root")
    return parts


class _DirSource:
    """An unpacked layout: names resolved inside the directory (symlinks followed only while
    they stay inside it)."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)

    def _path(self, name: str) -> str | None:
        real = os.path.realpath(os.path.join(self.root, *_parts(name)))
        if os.path.commonpath([real, self.root]) != self.root:
            raise OciError(f"file {_show(name)} points outside the image")
        return real if os.path.isfile(real) else None

    def exists(self, name: str) -> bool:
        return self._path(name) is not None

    def open(self, name: str) -> IO[bytes]:
        path = self._path(name)
        if path is None:
            raise OciError(f"the image has no file {_show(name)}")
        try:
            return open(path, "rb")
        except OSError as err:
            raise OciError(f"cannot read {_show(name)}: {err.strerror}") from None

    def close(self) -> None:
        pass


class _TarSource:
    """A tar of a layout or a `docker save`: read in place (a gzip-compressed one is first
    decompressed to a scratch file so members can be read in any order)."""

    def __init__(self, path: Path, scratch: Path, limits: ImportLimits) -> None:
        shown = path.name
        try:
            with open(path, "rb") as raw:
                magic = raw.read(2)
                raw.seek(0)
                if magic == b"\x1f\x8b":
                    plain = scratch / "input.tar"
                    with gzip.GzipFile(fileobj=raw) as unz, open(plain, "wb") as out:
                        _copy_bounded(unz, out, limits.max_bytes + (1 << 30), "the archive")
                    path = plain
            self.tar = tarfile.open(path, "r:")
        except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
            raise OciError(f"{shown}: not a tar archive ({_reason(err)})") from None
        try:
            self.entries = self._index(limits)
        except BaseException:
            self.tar.close()
            raise

    def _index(self, limits: ImportLimits) -> dict[str, tarfile.TarInfo]:
        entries: dict[str, tarfile.TarInfo] = {}
        count = 0
        try:
            while (info := self.tar.next()) is not None:
                count += 1
                if count > limits.max_archive_members:
                    raise OciError(f"the archive has more than {limits.max_archive_members} "
                                   "entries")
                parts = _parts(info.name) if info.name.strip("./") else []
                if parts:
                    entries["/".join(parts)] = info
        except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
            raise OciError(f"not a valid tar archive ({_reason(err)})") from None
        return entries

    def _resolve(self, name: str) -> tarfile.TarInfo | None:
        path = "/".join(_parts(name))
        for _ in range(40):
            info = self.entries.get(path)
            if info is None or info.isreg():
                return info
            if info.issym():
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                           info.linkname))
            elif info.islnk():
                joined = posixpath.normpath(info.linkname)
            else:
                return None
            if joined.startswith(("/", "../")) or joined == "..":
                raise OciError(f"file {_show(name)} points outside the image")
            path = joined
        raise OciError(f"file {_show(name)}: too many links")

    def exists(self, name: str) -> bool:
        return self._resolve(name) is not None

    def open(self, name: str) -> IO[bytes]:
        info = self._resolve(name)
        if info is None:
            raise OciError(f"the image has no file {_show(name)}")
        data = self.tar.extractfile(info)
        assert data is not None
        return data

    def close(self) -> None:
        self.tar.close()


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0][:120] if str(err) else ""
    return text or type(err).__name__


def _copy_bounded(src: IO[bytes] | gzip.GzipFile, dst: IO[bytes], limit: int, what: str) -> None:
    total = 0
    while chunk := src.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise OciError(f"{what} is larger than {limit} bytes uncompressed")
        dst.write(chunk)


# -- documents and blobs ------------------------------------------------------------------
@dataclass(frozen=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any]
    annotations: dict[str, str]


def _descriptor(raw: Any, what: str) -> _Descriptor:
    if not isinstance(raw, dict):
        raise OciError(f"{what}: a descriptor is not an object")
    digest, size = raw.get("digest"), raw.get("size")
    if not isinstance(digest, str) or ":" not in digest:
        raise OciError(f"{what}: descriptor without a valid digest")
    alg, _, hexpart = digest.partition(":")
    if alg not in _HEX or not _HEX[alg].fullmatch(hexpart):
        raise OciError(f"{what}: unsupported digest {_show(digest)}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise OciError(f"{what}: descriptor {digest[:19]} without a valid size")
    media = raw.get("mediaType", "")
    platform = raw.get("platform") or {}
    annotations = raw.get("annotations") or {}
    if not isinstance(media, str) or not isinstance(platform, dict) \
            or not isinstance(annotations, dict):
        raise OciError(f"{what}: malformed descriptor {digest[:19]}")
    return _Descriptor(media, digest, size, platform,
                       {str(k): str(v) for k, v in annotations.items()})


def _blob_name(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"


def _parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise OciError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OciError(f"{what} is not a JSON object")
    return doc


def _read_limited(src: _Source, name: str, limit: int, what: str) -> bytes:
    with src.open(name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OciError(f"{what} is larger than {limit} bytes")
    return data


def _read_json(src: _Source, name: str, limits: ImportLimits, what: str,
               digest: str | None = None, size: int | None = None) -> dict[str, Any]:
    data = _read_limited(src, name, limits.max_json, what)
    if size is not None and len(data) != size:
        raise OciError(f"{what}: size {len(data)} does not match its descriptor ({size})")
    if digest is not None:
        alg, _, expect = digest.partition(":")
        if hashlib.new(alg, data).hexdigest() != expect:
            raise OciError(f"{what}: digest mismatch (expected {digest[:19]}...)")
    return _parse_json(data, what)


def _blob_json(src: _Source, desc: _Descriptor, limits: ImportLimits,
               what: str) -> dict[str, Any]:
    return _read_json(src, _blob_name(desc.digest), limits, what, desc.digest, desc.size)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OciError(f"image config: {what} is not a list of strings")
    return list(value)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OciError(f"{what}: manifests is not a list")
    return value


def _normal_ref(ref: str) -> str:
    """"busybox" -> "busybox:latest"; "docker.io/library/x:1" -> "x:1"."""
    for prefix in ("docker.io/", "index.docker.io/"):
        ref = ref.removeprefix(prefix)
    ref = ref.removeprefix("library/")
    last = ref.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        ref += ":latest"
    return ref


def _ref_matches(ref: str, names: list[str]) -> bool:
    want = _normal_ref(ref)
    return any(name == ref or (name and _normal_ref(name) == want) for name in names)


def arch_of(name: str) -> str:
    """The Viridian name of an --arch value (x86_64, amd64, i386, 386)."""
    found = _ARCH_ALIASES.get(name.lower())
    if found is None:
        raise OciError(f"unsupported architecture {_show(name)}: use x86_64 (amd64) or "
                       "i386 (386)")
    return found


# -- picking the image --------------------------------------------------------------------
@dataclass(frozen=True)
class _Chosen:
    config: dict[str, Any]
    layers: list[tuple[str, str | None, int | None]]   # (file name, digest, size)
    diff_ids: list[str]
    arch: str
    notes: list[str]


def _config_arch(config: dict[str, Any]) -> str:
    os_name = config.get("os", "linux")
    arch = config.get("architecture", "")
    if os_name != "linux":
        raise OciError(f"image is for {_show(str(os_name))}, not linux")
    if not isinstance(arch, str) or arch not in ARCHES:
        raise OciError(f"image architecture {_show(str(arch))} is not supported (Viridian "
                       "runs amd64 and 386 images)")
    return ARCHES[arch]


def _diff_ids(config: dict[str, Any], count: int) -> list[str]:
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    ids = _strings(ids, "rootfs.diff_ids")
    if len(ids) != count:
        raise OciError(f"image config lists {len(ids)} layer digests for {count} layers")
    for d in ids:
        alg, _, hexpart = d.partition(":")
        if alg not in _HEX or not _HEX[alg].fullmatch(hexpart):
            raise OciError(f"image config: unsupported layer digest {_show(d)}")
    return ids


def _pick_oci(src: _Source, arch: str | None, ref: str | None,
              limits: ImportLimits) -> _Chosen:
    index = _read_json(src, "index.json", limits, "index.json")
    tops = [_descriptor(d, "index.json") for d in _list(index.get("manifests"), "index.json")]
    if ref is not None:
        names = {d.digest: [d.annotations.get("org.opencontainers.image.ref.name", ""),
                            d.annotations.get("io.containerd.image.name", "")] for d in tops}
        found = [d for d in tops if _ref_matches(ref, names[d.digest])]
        if not found:
            known = sorted({n for ns in names.values() for n in ns if n})
            raise OciError(f"no image named {_show(ref)} in the layout"
                           + (f" (it has: {_names(known)})" if known else ""))
        tops = found
    # Expand nested indexes into (descriptor, platform) leaves.
    leaves: list[_Descriptor] = []
    pending = [(d, 0) for d in tops]
    while pending:
        desc, depth = pending.pop(0)
        if desc.media_type in _INDEX_TYPES:
            if depth >= 4:
                raise OciError("image indexes nested too deeply")
            nested = _blob_json(src, desc, limits, f"index {desc.digest[:19]}")
            pending += [(_descriptor(d, f"index {desc.digest[:19]}"), depth + 1)
                        for d in _list(nested.get("manifests"), "image index")]
        elif desc.media_type in _MANIFEST_TYPES or not desc.media_type:
            if desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
                continue
            leaves.append(desc)
    if not leaves:
        raise OciError("the layout holds no image manifest")
    # The platform of each leaf: from its descriptor, else from its config.
    options: list[tuple[str, _Descriptor]] = []
    seen_platforms: list[str] = []
    for desc in leaves:
        plat = desc.platform
        if plat:
            os_name, cpu = str(plat.get("os", "?")), str(plat.get("architecture", "?"))
            seen_platforms.append(f"{os_name}/{cpu}")
            if os_name == "linux" and cpu in ARCHES:
                options.append((ARCHES[cpu], desc))
        else:
            options.append(("", desc))
    notes: list[str] = []
    if arch is not None:
        options = [(a, d) for a, d in options if a in ("", arch)]
    if not options:
        want = f"linux/{next(k for k, v in ARCHES.items() if v == arch)}" if arch \
            else "linux/amd64 or linux/386"
        raise OciError(f"no {want} image in the layout (it has: "
                       f"{_names(sorted(set(seen_platforms))) or 'none'})")
    arches = {a for a, _ in options if a}
    if arch is None and len(arches) > 1:
        options = [(a, d) for a, d in options if a in ("", "x86_64")]
        notes.append("the image has x86_64 and i386 variants: took x86_64 (choose with --arch)")
    if len(options) > 1:
        raise OciError(f"the layout holds {len(options)} images that match: choose one with "
                       "--ref (and --arch)")
    desc = options[0][1]
    manifest = _blob_json(src, desc, limits, f"manifest {desc.digest[:19]}")
    config_desc = _descriptor(manifest.get("config"), "manifest config")
    config = _blob_json(src, config_desc, limits, "image config")
    found_arch = _config_arch(config)
    if arch is not None and found_arch != arch:
        raise OciError(f"the image is {found_arch}, not {arch}")
    raw_layers = manifest.get("layers") or []
    if not isinstance(raw_layers, list):
        raise OciError("manifest: layers is not a list")
    layers: list[tuple[str, str | None, int | None]] = []
    for raw in raw_layers:
        d = _descriptor(raw, "manifest layer")
        if "nondistributable" in d.media_type or "foreign" in d.media_type:
            raise OciError(f"layer {d.digest[:19]} is non-distributable (not in the layout)")
        layers.append((_blob_name(d.digest), d.digest, d.size))
    return _Chosen(config, layers, _diff_ids(config, len(layers)), found_arch, notes)


def _pick_docker(src: _Source, arch: str | None, ref: str | None,
                 limits: ImportLimits) -> _Chosen:
    data = _read_limited(src, "manifest.json", limits.max_json, "manifest.json")
    try:
        entries = json.loads(data)
    except (ValueError, RecursionError):
        raise OciError("manifest.json is not valid JSON") from None
    if not isinstance(entries, list) or not entries \
            or not all(isinstance(e, dict) for e in entries):
        raise OciError("manifest.json is not a list of images")
    tags = {i: _strings(e.get("RepoTags"), "RepoTags") for i, e in enumerate(entries)}
    chosen = list(range(len(entries)))
    if ref is not None:
        chosen = [i for i in chosen if _ref_matches(ref, tags[i])]
        if not chosen:
            known = sorted({t for ts in tags.values() for t in ts})
            raise OciError(f"no image tagged {_show(ref)} in the archive"
                           + (f" (it has: {_names(known)})" if known else ""))
    if len(chosen) > 1:
        known = sorted({t for i in chosen for t in tags[i]})
        raise OciError(f"the archive holds {len(chosen)} images: choose one with --ref"
                       + (f" ({_names(known)})" if known else ""))
    entry = entries[chosen[0]]
    config_name = entry.get("Config")
    if not isinstance(config_name, str):
        raise OciError("manifest.json: Config is not a file name")
    digest = _digest_in_name(config_name)
    config = _read_json(src, config_name, limits, "image config", digest)
    found_arch = _config_arch(config)
    if arch is not None and found_arch != arch:
        raise OciError(f"the image is {found_arch}, not {arch}")
    names = _strings(entry.get("Layers"), "Layers")
    layers: list[tuple[str, str | None, int | None]] = [
        (n, _digest_in_name(n), None) for n in names]
    return _Chosen(config, layers, _diff_ids(config, len(layers)), found_arch, [])


def _digest_in_name(name: str) -> str | None:
    """The digest a docker-save file name carries ("<hex>.json", "blobs/sha256/<hex>")."""
    m = re.fullmatch(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?", name)
    return f"sha256:{m.group(1)}" if m else None


# -- applying layers ----------------------------------------------------------------------
class _Hashing:
    """A reader that hashes what passes and bounds it."""

    def __init__(self, src: IO[bytes] | BinaryIO, alg: str, limit: int, what: str) -> None:
        self.src, self.hash, self.limit, self.what, self.seen = src, hashlib.new(alg), limit, \
            what, 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = _CHUNK
        data = self.src.read(n)
        self.seen += len(data)
        if self.seen > self.limit:
            raise OciError(f"{self.what} is larger than {self.limit} bytes")
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def _decompressor(raw: _Hashing, what: str) -> BinaryIO:
    head = raw.src.read(4)
    raw.seen += len(head)
    raw.hash.update(head)
    body = cast(BinaryIO, _Prefixed(head, raw))
    if head.startswith(b"\x1f\x8b"):
        return cast(BinaryIO, gzip.GzipFile(fileobj=body, mode="rb"))
    if head == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise OciError(f"{what} is zstd-compressed and the 'zstandard' Python package "
                           "is not installed") from None
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(body))
    return body


class _Prefixed:
    """``head`` (already read and hashed) followed by the rest of ``src``."""

    def __init__(self, head: bytes, src: _Hashing) -> None:
        self.head, self.src = head, src

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data = self.head if n < 0 else self.head[:n]
            self.head = self.head[len(data):]
            return data
        return self.src.read(n)


@contextmanager
def _layer_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OciError:
        raise
    except ArchiveError as err:
        raise OciError(f"{what}: {err}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, RecursionError,
            UnicodeError) as err:
        if isinstance(err, OSError) and err.strerror:
            reason = err.strerror
        elif isinstance(err, tarfile.TarError):
            reason = _reason(err)
        else:
            reason = "corrupt or truncated data"
        raise OciError(f"{what}: {reason}") from None


class _Root:
    """The scratch root the layers are applied to, member by member."""

    def __init__(self, root_fd: int, limits: ImportLimits) -> None:
        self.fd, self.limits = root_fd, limits
        self.members = 0
        self.bytes = 0
        self.devices = self.fifos = self.setid = 0
        #: The mtime of the member that last wrote each path: the output carries these
        #: (0 for directories no member named), so one image always gives the same tar.
        self.mtimes: dict[str, int] = {}

    # The layer's own paths (and their parents) survive its whiteouts and opaque markers.
    def apply(self, tar: tarfile.TarFile, what: str) -> None:
        checker = MemberChecker(Limits(max_members=self.limits.max_members,
                                       max_bytes=self.limits.max_bytes))
        touched: set[str] = set()
        while True:
            info = tar.next()
            cast(Any, tar).members.clear()
            if info is None:
                return
            self.members += 1
            if self.members > self.limits.max_members:
                raise OciError(f"more than {self.limits.max_members} entries in the layers")
            label = f"{what}: member {_show(info.name)}"
            parts = split_name(info.name, label.split(": ", 1)[1])
            base = parts[-1] if parts else ""
            if base.startswith(WHITEOUT):
                if base == OPAQUE or not base.startswith(WHITEOUT + WHITEOUT):
                    self._whiteout(parts, touched)
                continue                  # other .wh..wh. names are aufs bookkeeping
            if info.ischr() or info.isblk():
                self.devices += 1
                continue
            if info.isfifo():
                self.fifos += 1
                continue
            if info.mode & (stat.S_ISUID | stat.S_ISGID):
                self.setid += 1
            info.mode &= 0o777
            cross_link = None
            if info.islnk():
                target = "/".join(split_name(info.linkname, f"{label} (hard link target)"))
                if target not in checker.table.entries:
                    cross_link = target
                    probe = tarfile.TarInfo(info.name)
                    probe.type, probe.mode = tarfile.REGTYPE, info.mode
                    checker.admit(probe)
                    parts = split_name(info.name, label)
            if cross_link is None:
                member = checker.admit(info)
                if member is None:
                    continue
                parts = member.path.split("/")
            if info.isreg():
                self.bytes += info.size
                if self.bytes > self.limits.max_bytes:
                    raise OciError(f"the layers hold more than {self.limits.max_bytes} bytes "
                                   "of files")
            for i in range(1, len(parts) + 1):
                touched.add("/".join(parts[:i]))
            self.mtimes["/".join(parts)] = min(max(int(info.mtime), 0), 8 ** 11 - 1)
            self._write(tar, info, parts, cross_link, label)

    def _open_parent(self, parts: list[str], label: str, create: bool) -> int | None:
        fd = os.dup(self.fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    nxt = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nxt = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    if not create:
                        os.close(fd)
                        return None
                    mode = _lstat_mode(fd, comp)
                    if not mode or stat.S_ISDIR(mode):
                        raise
                    kind = "symlink" if stat.S_ISLNK(mode) else "file"
                    raise OciError(f"{label}: parent {_show('/'.join(parts[:i + 1]))} is a "
                                   f"{kind} in a lower layer") from err
                os.close(fd)
                fd = nxt
        except BaseException:
            with suppress(OSError):
                os.close(fd)
            raise
        return fd

    def _remove(self, parent: int, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    def _whiteout(self, parts: list[str], touched: set[str]) -> None:
        parent = self._open_parent(parts[:-1], "", create=False)
        if parent is None:
            return                        # nothing below to hide
        try:
            prefix = "/".join(parts[:-1])
            if parts[-1] == OPAQUE:
                self._clear(parent, prefix, touched)
            else:
                name = parts[-1][len(WHITEOUT):]
                path = f"{prefix}/{name}" if prefix else name
                if not name or name in (".", ".."):
                    return
                if path not in touched:
                    self._remove(parent, name)
                elif stat.S_ISDIR(_lstat_mode(parent, name)):
                    # This layer writes inside it too (before or after the whiteout, in
                    # archive order): what it writes stays, the lower content goes.
                    sub = os.open(name, _DIR_FLAGS, dir_fd=parent)
                    try:
                        self._clear(sub, path, touched)
                    finally:
                        os.close(sub)
        finally:
            os.close(parent)

    def _clear(self, dir_fd: int, prefix: str, touched: set[str]) -> None:
        """Remove from the directory everything this layer did not write."""
        for name in os.listdir(dir_fd):
            path = f"{prefix}/{name}" if prefix else name
            if path not in touched:
                self._remove(dir_fd, name)
                continue
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    self._clear(sub, path, touched)
                finally:
                    os.close(sub)

    def _write(self, tar: tarfile.TarFile, info: tarfile.TarInfo, parts: list[str],
               cross_link: str | None, label: str) -> None:
        parent = self._open_parent(parts[:-1], label, create=True)
        assert parent is not None
        name = parts[-1]
        try:
            try:
                old = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            except FileNotFoundError:
                old = None
            if info.isdir() and old is not None and stat.S_ISDIR(old):
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                try:
                    os.fchmod(fd, info.mode | 0o700)
                finally:
                    os.close(fd)
                return
            if old is not None:
                self._remove(parent, name)
            if info.isreg():
                fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent)
                try:
                    data = tar.extractfile(info)
                    assert data is not None
                    while chunk := data.read(_CHUNK):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                    os.fchmod(fd, info.mode | 0o600)
                finally:
                    os.close(fd)
            elif info.isdir():
                os.mkdir(name, 0o700, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                try:
                    os.fchmod(fd, info.mode | 0o700)
                finally:
                    os.close(fd)
            elif info.issym():
                os.symlink(info.linkname, name, dir_fd=parent)
            else:
                target = (cross_link or "/".join(split_name(info.linkname, label))).split("/")
                src = self._open_parent(target[:-1], label, create=False)
                ok = src is not None and stat.S_ISREG(
                    _lstat_mode(src, target[-1]))
                if src is None or not ok:
                    if src is not None:
                        os.close(src)
                    raise OciError(f"{label}: hard link target {_show(info.linkname)} is not "
                                   "a regular file of the image")
                try:
                    os.link(target[-1], name, src_dir_fd=src, dst_dir_fd=parent,
                            follow_symlinks=False)
                finally:
                    os.close(src)
        finally:
            os.close(parent)


def _lstat_mode(dir_fd: int, name: str) -> int:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return 0


def _apply_layer(root: _Root, src: _Source, index: int, layer: tuple[str, str | None, int | None],
                 diff_id: str, limits: ImportLimits) -> None:
    name, digest, size = layer
    what = f"layer {index + 1}"
    with _layer_errors(what), src.open(name) as f:
        alg = digest.partition(":")[0] if digest else "sha256"
        raw = _Hashing(f, alg, size if size is not None else 1 << 62, what)
        plain = _decompressor(raw, what)
        diff_alg = diff_id.partition(":")[0]
        uncompressed = _Hashing(plain, diff_alg, limits.max_layer_bytes,
                                f"{what} (uncompressed)")
        tar = tarfile.open(fileobj=cast(IO[bytes], uncompressed), mode="r|")
        root.apply(tar, what)
        uncompressed.drain()
        raw.drain()
        if size is not None and raw.seen != size:
            raise OciError(f"{what}: size {raw.seen} does not match its descriptor ({size})")
        if digest is not None and f"{alg}:{raw.hash.hexdigest()}" != digest:
            raise OciError(f"{what}: digest mismatch (expected {digest[:19]}...)")
        if f"{diff_alg}:{uncompressed.hash.hexdigest()}" != diff_id:
            raise OciError(f"{what}: content does not match the config's diff_id "
                           f"{diff_id[:19]}...")


def _write_tar(root: Path, dest: Path, limits: ImportLimits, mtimes: dict[str, int]) -> None:
    check = packing_filter(Limits(max_members=limits.max_members, max_bytes=limits.max_bytes))

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info = check(info)
        info.mtime = mtimes.get(info.name, 0)
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(dirs + files):
                path = os.path.join(top, name)
                tar.add(path, arcname=os.path.relpath(path, root), recursive=False,
                        filter=clean)


# -- the program --------------------------------------------------------------------------
def _env_path(env: list[str]) -> str:
    for item in reversed(env):
        if item.startswith("PATH="):
            return item[5:]
    return DEFAULT_PATH


def _find_program(root_fd: int, name: str, env: list[str]) -> str:
    if "/" in name:
        if not name.startswith("/"):
            raise OciError(f"entrypoint {_show(name)} is neither absolute nor a bare name "
                           "found on PATH")
        if not is_regular_file(root_fd, name):
            raise OciError(f"entrypoint {_show(name)} is not a file in the image")
        return name
    if not name:
        raise OciError("the image's entrypoint is empty")
    for directory in _env_path(env).split(":"):
        if directory.startswith("/"):
            candidate = posixpath.join(directory, name)
            if is_regular_file(root_fd, candidate):
                return candidate
    raise OciError(f"entrypoint {_show(name)} is not found on the image's PATH")


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
        src: _Source
        if source.is_dir():
            src = _DirSource(source)
        elif source.is_file():
            src = _TarSource(source, scratch, limits)
        else:
            raise OciError(f"{source} is neither a directory nor a file")
        try:
            if src.exists("index.json"):
                kind = "oci"
                chosen = _pick_oci(src, want_arch, ref, limits)
            elif src.exists("manifest.json"):
                kind = "docker"
                chosen = _pick_docker(src, want_arch, ref, limits)
            else:
                raise OciError("neither an OCI image layout (no index.json) nor a docker "
                               "save archive (no manifest.json); a plain root filesystem is "
                               "pushed with `viridian image push`")
            if len(chosen.layers) > limits.max_layers:
                raise OciError(f"the image has more than {limits.max_layers} layers")
            rootdir = scratch / "root"
            rootdir.mkdir(mode=0o700)
            root_fd = os.open(rootdir, _DIR_FLAGS)
            try:
                root = _Root(root_fd, limits)
                for i, layer in enumerate(chosen.layers):
                    _apply_layer(root, src, i, layer, chosen.diff_ids[i], limits)
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
            _write_tar(rootdir, dest, limits, root.mtimes)
        except (ArchiveError, OSError) as err:
            with suppress(OSError):
                dest.unlink()
            raise OciError(f"cannot write the root tar: {err}") from None
    return ImportedImage(**{**image, "size_bytes": dest.stat().st_size, "notes": notes,
                            "layers": len(chosen.layers)})


def _describe(chosen: _Chosen, kind: str, root_fd: int, override: str | None) -> dict[str, Any]:
    cfg = chosen.config.get("config") or {}
    if not isinstance(cfg, dict):
        raise OciError("image config: config is not an object")
    entry = _strings(cfg.get("Entrypoint"), "Entrypoint")
    cmd = _strings(cfg.get("Cmd"), "Cmd")
    env = _strings(cfg.get("Env"), "Env")
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
