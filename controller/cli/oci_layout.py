"""Reading an OCI image layout (a directory, or a tar of one, gzip'd or not) or a `docker
save` archive, and choosing the image to import: the index (nested indexes too) filtered by
--ref and --arch, the manifest and config read with their digests and sizes checked.

Every name and document is hostile: names are checked as archive member names, files may not
point outside the layout, JSON documents are bounded and type-checked field by field.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from node_agent.runtime.archive import ArchiveError, split_name

__all__ = ["ARCHES", "Chosen", "DirSource", "ImportLimits", "OciError", "Source",
           "TarSource", "arch_of", "pick_docker", "pick_oci", "reason_of", "show", "strings"]

#: OCI architecture names Viridian runs, and the name Viridian gives them.
ARCHES = {"amd64": "x86_64", "386": "i386"}
_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "386": "i386", "i386": "i386"}

_CHUNK = 1 << 20
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
    max_depth: int = 128             # directories above a layer entry (real images: < 30)
    max_layers: int = 256
    max_json: int = 4 << 20          # index, manifest and config documents
    max_archive_members: int = 100_000  # entries of an input archive (blobs, json files)


def _names(names: list[str]) -> str:
    """Names from the image for a message: printable ones as they are, others quoted;
    at most ten."""
    shown = [n if n.isprintable() and len(n) <= 96 else show(n) for n in names[:10]]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


def show(text: str) -> str:
    if len(text) > 96:
        text = text[:64] + "..." + text[-24:]
    return repr(text)


# -- where the input's files are ----------------------------------------------------------
class Source(Protocol):
    def exists(self, name: str) -> bool: ...
    def open(self, name: str) -> IO[bytes]: ...
    def close(self) -> None: ...


def _parts(name: str) -> list[str]:
    try:
        parts = split_name(name, f"file {show(name)}")
    except ArchiveError as err:
        raise OciError(str(err)) from None
    if not parts:
        raise OciError(f"file {show(name)}: names the image's root")
    return parts


class DirSource:
    """An unpacked layout: names resolved inside the directory (symlinks followed only while
    they stay inside it)."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)

    def _path(self, name: str) -> str | None:
        real = os.path.realpath(os.path.join(self.root, *_parts(name)))
        if os.path.commonpath([real, self.root]) != self.root:
            raise OciError(f"file {show(name)} points outside the image")
        return real if os.path.isfile(real) else None

    def exists(self, name: str) -> bool:
        return self._path(name) is not None

    def open(self, name: str) -> IO[bytes]:
        path = self._path(name)
        if path is None:
            raise OciError(f"the image has no file {show(name)}")
        try:
            return open(path, "rb")
        except OSError as err:
            raise OciError(f"cannot read {show(name)}: {err.strerror}") from None

    def close(self) -> None:
        pass


class TarSource:
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
            raise OciError(f"{shown}: not a tar archive ({reason_of(err)})") from None
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
            raise OciError(f"not a valid tar archive ({reason_of(err)})") from None
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
                raise OciError(f"file {show(name)} points outside the image")
            path = joined
        raise OciError(f"file {show(name)}: too many links")

    def exists(self, name: str) -> bool:
        return self._resolve(name) is not None

    def open(self, name: str) -> IO[bytes]:
        info = self._resolve(name)
        if info is None:
            raise OciError(f"the image has no file {show(name)}")
        data = self.tar.extractfile(info)
        assert data is not None
        return data

    def close(self) -> None:
        self.tar.close()


def reason_of(err: BaseException) -> str:
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
        raise OciError(f"{what}: unsupported digest {show(digest)}")
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


def _read_limited(src: Source, name: str, limit: int, what: str) -> bytes:
    with src.open(name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OciError(f"{what} is larger than {limit} bytes")
    return data


def _read_json(src: Source, name: str, limits: ImportLimits, what: str,
               digest: str | None = None, size: int | None = None) -> dict[str, Any]:
    data = _read_limited(src, name, limits.max_json, what)
    if size is not None and len(data) != size:
        raise OciError(f"{what}: size {len(data)} does not match its descriptor ({size})")
    if digest is not None:
        alg, _, expect = digest.partition(":")
        if hashlib.new(alg, data).hexdigest() != expect:
            raise OciError(f"{what}: digest mismatch (expected {digest[:19]}...)")
    return _parse_json(data, what)


def _blob_json(src: Source, desc: _Descriptor, limits: ImportLimits,
               what: str) -> dict[str, Any]:
    return _read_json(src, _blob_name(desc.digest), limits, what, desc.digest, desc.size)


def strings(value: Any, what: str) -> list[str]:
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
        raise OciError(f"unsupported architecture {show(name)}: use x86_64 (amd64) or "
                       "i386 (386)")
    return found


# -- picking the image --------------------------------------------------------------------
@dataclass(frozen=True)
class Chosen:
    config: dict[str, Any]
    layers: list[tuple[str, str | None, int | None]]   # (file name, digest, size)
    diff_ids: list[str]
    arch: str
    notes: list[str]


def _config_arch(config: dict[str, Any]) -> str:
    os_name = config.get("os", "linux")
    arch = config.get("architecture", "")
    if os_name != "linux":
        raise OciError(f"image is for {show(str(os_name))}, not linux")
    if not isinstance(arch, str) or arch not in ARCHES:
        raise OciError(f"image architecture {show(str(arch))} is not supported (Viridian "
                       "runs amd64 and 386 images)")
    return ARCHES[arch]


def _diff_ids(config: dict[str, Any], count: int) -> list[str]:
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    ids = strings(ids, "rootfs.diff_ids")
    if len(ids) != count:
        raise OciError(f"image config lists {len(ids)} layer digests for {count} layers")
    for d in ids:
        alg, _, hexpart = d.partition(":")
        if alg not in _HEX or not _HEX[alg].fullmatch(hexpart):
            raise OciError(f"image config: unsupported layer digest {show(d)}")
    return ids


def pick_oci(src: Source, arch: str | None, ref: str | None,
              limits: ImportLimits) -> Chosen:
    index = _read_json(src, "index.json", limits, "index.json")
    tops = [_descriptor(d, "index.json") for d in _list(index.get("manifests"), "index.json")]
    if ref is not None:
        names = {d.digest: [d.annotations.get("org.opencontainers.image.ref.name", ""),
                            d.annotations.get("io.containerd.image.name", "")] for d in tops}
        found = [d for d in tops if _ref_matches(ref, names[d.digest])]
        if not found:
            known = sorted({n for ns in names.values() for n in ns if n})
            raise OciError(f"no image named {show(ref)} in the layout"
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
    return Chosen(config, layers, _diff_ids(config, len(layers)), found_arch, notes)


def pick_docker(src: Source, arch: str | None, ref: str | None,
                 limits: ImportLimits) -> Chosen:
    data = _read_limited(src, "manifest.json", limits.max_json, "manifest.json")
    try:
        entries = json.loads(data)
    except (ValueError, RecursionError):
        raise OciError("manifest.json is not valid JSON") from None
    if not isinstance(entries, list) or not entries \
            or not all(isinstance(e, dict) for e in entries):
        raise OciError("manifest.json is not a list of images")
    tags = {i: strings(e.get("RepoTags"), "RepoTags") for i, e in enumerate(entries)}
    chosen = list(range(len(entries)))
    if ref is not None:
        chosen = [i for i in chosen if _ref_matches(ref, tags[i])]
        if not chosen:
            known = sorted({t for ts in tags.values() for t in ts})
            raise OciError(f"no image tagged {show(ref)} in the archive"
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
    names = strings(entry.get("Layers"), "Layers")
    layers: list[tuple[str, str | None, int | None]] = [
        (n, _digest_in_name(n), None) for n in names]
    return Chosen(config, layers, _diff_ids(config, len(layers)), found_arch, [])


def _digest_in_name(name: str) -> str | None:
    """The digest a docker-save file name carries ("<hex>.json", "blobs/sha256/<hex>")."""
    m = re.fullmatch(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?", name)
    return f"sha256:{m.group(1)}" if m else None


