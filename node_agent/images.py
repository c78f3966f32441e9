"""The node's image cache: content pulled by digest through the controller (image_pull.py),
verified by sha256 as it arrives, unpacked into a read-only root the partitions'
filesystems are layered on.

On disk, under the cache directory:

  <key>/root/        the unpacked root (<key> is the digest's hex; an "elf" image, placed
                     at its entrypoint path, adds a hash of that path: <hex>-<16 hex>)
  <key>/meta.json    {"bytes": disk bytes of the root}; its mtime is the last use
  partial/<key>      a blob being downloaded (cleaned at start)
  *.tmp              an install or an eviction under way (cleaned at start)

An entry appears whole (a rename) or not at all. The cache holds at most ``limit_bytes``:
before a pull (and after an install) the least recently used entries no partition here uses
are evicted. Entries in use are never evicted, so in-use images alone may exceed the limit.

Tar images are unpacked by the strict unpacker (node_agent.runtime.archive), the same rules
the controller applied at push; nothing on the host is followed, and errors name guest paths
and members only."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from node_agent.runtime.archive import (
    IMAGE_LIMITS,
    ArchiveError,
    is_regular_file,
    open_root,
    place_stream,
    unpack,
)

log = logging.getLogger(__name__)

DEFAULT_LIMIT_BYTES = 20 << 30
PARTIAL = "partial"
META = "meta.json"
_KEY = re.compile(r"^[0-9a-f]{64}(-[0-9a-f]{16})?$")
_HEX = re.compile(r"^[0-9a-f]{64}$")

#: Downloads a blob into the given path (verified), e.g. BlobPuller.pull bound to an image.
Download = Callable[[Path], Awaitable[None]]


class ImagePullError(Exception):
    pass


def check_digest(digest: str) -> str:
    """The hex of a "sha256:<hex>" digest; ImagePullError for anything else."""
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or not _HEX.match(hexdigest):
        raise ImagePullError(f"invalid image digest {digest[:80]!r}")
    return hexdigest


def cache_key(digest: str, fmt: str, entrypoint: str) -> str:
    """The cache directory of an image's content: its digest's hex, and for an "elf" image
    (one file, placed at its entrypoint) a hash of that path too."""
    hexdigest = check_digest(digest)
    if fmt not in ("tar", "elf"):
        raise ImagePullError(f"unknown image format {fmt[:40]!r}")
    if fmt == "tar":
        return hexdigest
    return hexdigest + "-" + hashlib.sha256(entrypoint.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Blob:
    """What to fetch: the content and how to lay it out."""

    digest: str
    size: int
    fmt: str
    entrypoint: str

    @property
    def key(self) -> str:
        return cache_key(self.digest, self.fmt, self.entrypoint)


@dataclass
class _Entry:
    size: int
    used: float      # wall time of the last use (the LRU order, kept across restarts)
    seq: int = 0     # ImageCache._seq at the last use (make_room's since)


def _disk_bytes(path: Path) -> int:
    """Bytes a tree takes on disk (each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


class ImageCache:
    def __init__(self, root: Path, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"the image cache limit must be positive, got {limit_bytes}")
        self.root = root
        self.limit_bytes = limit_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._seq = 0     # counts uses: make_room spares entries used after its snapshot
        # An image that unpacks to more than the whole cache could never be kept.
        self._limits = dataclasses.replace(IMAGE_LIMITS,
                                           max_bytes=max(limit_bytes, IMAGE_LIMITS.max_bytes))
        self._install_lock = threading.Lock()
        self._inflight: dict[str, asyncio.Task[Path]] = {}   # by entry key
        self.downloads = 0    # blobs downloaded by ensure() (tests, metrics)
        self._clean_and_scan()

    # -- start-up ----------------------------------------------------------------------
    def _clean_and_scan(self) -> None:
        """Drop what an earlier agent left half done; index the complete entries."""
        for path in self.root.iterdir():
            name = path.name
            if name == PARTIAL or name.endswith(".tmp"):
                self._remove(path)
            elif _KEY.match(name) and path.is_dir() and not path.is_symlink():
                if (path / "root").is_dir():
                    self._entries[name] = self._read_meta(path)
                else:
                    self._remove(path)

    def _read_meta(self, path: Path) -> _Entry:
        meta = path / META
        try:
            raw = json.loads(meta.read_text())
            size = raw["bytes"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError("bad size")
            return _Entry(size, meta.stat().st_mtime)
        except (OSError, ValueError, KeyError, TypeError):
            size = _disk_bytes(path / "root")
            self._write_meta(path, size)
            return _Entry(size, time.time())

    @staticmethod
    def _write_meta(path: Path, size: int) -> None:
        tmp = path / (META + ".new")
        tmp.write_text(json.dumps({"bytes": size}))
        tmp.rename(path / META)

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    # -- lookups -----------------------------------------------------------------------
    def _dir(self, digest: str, fmt: str = "tar", entrypoint: str = "") -> Path:
        return self.root / cache_key(digest, fmt, entrypoint)

    def root_for(self, digest: str, entrypoint: str, fmt: str = "tar") -> Path | None:
        """The unpacked root if present and holding the entrypoint (symlinks followed inside
        the root, as the guest sees them), else None."""
        root = self._dir(digest, fmt, entrypoint) / "root"
        return root if self.has_file(root, entrypoint) else None

    @staticmethod
    def has_file(root: Path, guest_path: str) -> bool:
        """Whether ``guest_path`` is a regular file in the unpacked ``root``."""
        try:
            fd = open_root(root)
        except OSError:
            return False
        try:
            return is_regular_file(fd, guest_path)
        finally:
            os.close(fd)

    def key_of_root(self, root: Path) -> str | None:
        """The entry a root directory belongs to (a worker's spec.root), if it is ours."""
        if root.name != "root" or root.parent.parent.resolve() != self._real_root:
            return None
        key = root.parent.name
        return key if _KEY.match(key) else None

    def partial_path(self, key: str) -> Path:
        """Where the blob of entry ``key`` is downloaded to."""
        if not _KEY.match(key):
            raise ImagePullError(f"invalid image cache key {key[:80]!r}")
        part = self.root / PARTIAL
        part.mkdir(exist_ok=True)
        return part / key

    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def entries(self) -> dict[str, int]:
        """Entry key -> disk bytes."""
        with self._lock:
            return {k: e.size for k, e in self._entries.items()}

    def touch(self, key: str) -> bool:
        """Mark an entry used now (its LRU stamp survives a restart: the meta's mtime).
        False if it is not (or no longer) in the cache: an eviction took it."""
        now = time.time()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            self._seq += 1
            entry.used, entry.seq = now, self._seq
        try:
            os.utime(self.root / key / META, (now, now))
        except OSError:
            pass
        return True

    # -- eviction ----------------------------------------------------------------------
    def make_room(self, incoming: int, keep: set[str], since: int | None = None,
                  busy: frozenset[str] = frozenset()) -> list[str]:
        """Evict least recently used entries not in ``keep`` until the cache plus
        ``incoming`` bytes fits the limit (or nothing more may go); returns the keys gone.
        ``since``: the use count (use_count()) when ``keep`` was taken; an entry used
        after it (a launch that found it meanwhile) stays too. Also drops partial
        downloads other than ``busy``'s (the keys being downloaded)."""
        gone: list[Path] = []
        evicted: list[str] = []
        with self._lock:
            total = sum(e.size for e in self._entries.values())
            for key, entry in sorted(self._entries.items(), key=lambda kv: kv[1].used):
                if total + incoming <= self.limit_bytes:
                    break
                if key in keep or (since is not None and entry.seq > since):
                    continue
                trash = self.root / f"{key}.evict.tmp"
                try:
                    (self.root / key).rename(trash)
                except OSError as err:
                    log.warning("cannot evict image %s: %s", key[:12], err.strerror)
                    continue
                del self._entries[key]
                total -= entry.size
                gone.append(trash)
                evicted.append(key)
        for trash in gone:
            shutil.rmtree(trash, ignore_errors=True)
        part = self.root / PARTIAL
        if part.is_dir():
            for path in part.iterdir():
                if path.name not in busy:
                    path.unlink(missing_ok=True)
        if evicted:
            log.info("image cache: evicted %s", ", ".join(k[:12] for k in evicted))
        return evicted

    # -- fetching ----------------------------------------------------------------------
    async def ensure(self, blob: Blob, download: Download,
                     in_use: Callable[[], set[str]]) -> Path:
        """The unpacked root of ``blob``: from the cache, or downloaded and installed.
        Concurrent calls for one blob share one download. ``in_use`` gives the entry keys
        partitions on this node use (never evicted)."""
        key = blob.key
        root = self.root_for(blob.digest, blob.entrypoint, blob.fmt)
        # Stamped after the look: an eviction that began before spares it (make_room's
        # since), one that took it already makes touch() say so, and it is fetched again.
        if root is not None and self.touch(key):
            return root
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(blob, download, in_use),
                                       name=f"image-{key[:12]}")
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # Shielded: a waiter that goes away does not cancel the others' download.
        return await asyncio.shield(task)

    def _done(self, key: str, task: asyncio.Task[Path]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure is the waiters' to report

    async def _fetch(self, blob: Blob, download: Download,
                     in_use: Callable[[], set[str]]) -> Path:
        short = blob.digest[:19]
        if blob.size > self.limit_bytes:
            raise ImagePullError(
                f"image {short} ({blob.size} bytes) is larger than this node's image cache "
                f"({self.limit_bytes} bytes, agent --image-cache-size)")
        await self._make_room(blob.size, in_use() | {blob.key})
        partial = self.partial_path(blob.key)
        await download(partial)
        self.downloads += 1
        try:
            root = await asyncio.to_thread(self.install_file, blob.digest, blob.fmt,
                                           blob.entrypoint, partial)
        finally:
            partial.unlink(missing_ok=True)
        await self._make_room(0, in_use() | {blob.key})
        return root

    async def _make_room(self, incoming: int, keep: set[str]) -> None:
        await asyncio.to_thread(self.make_room, incoming, keep, self.use_count(),
                                frozenset(self._inflight))

    def use_count(self) -> int:
        with self._lock:
            return self._seq

    # -- installing --------------------------------------------------------------------
    def install(self, digest: str, fmt: str, entrypoint: str, content: bytes) -> Path:
        """Verify small in-memory content against digest and install it (tests, tools);
        pulls stream into a file and use install_file."""
        actual = "sha256:" + hashlib.sha256(content).hexdigest()
        if actual != digest:
            raise ImagePullError(f"image content has digest {actual}, expected {digest}")
        return self._install(digest, fmt, entrypoint, io.BytesIO(content))

    def install_file(self, digest: str, fmt: str, entrypoint: str, path: Path) -> Path:
        """Install verified content from a file (read as a stream); returns the root."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise ImagePullError(
                f"image {digest[:19]} cannot be installed: {err.strerror}") from None
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise ImagePullError(f"image {digest[:19]} cannot be installed: not a file")
            return self._install(digest, fmt, entrypoint, src)

    def _install(self, digest: str, fmt: str, entrypoint: str, src: BinaryIO) -> Path:
        """Unpack ``src`` into a new entry. On any failure nothing of it is left behind."""
        base = self._dir(digest, fmt, entrypoint)
        short = digest[:19]
        tmp = base.with_name(base.name + ".tmp")
        with self._install_lock:  # one install at a time (an entry's tmp name is fixed)
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                (tmp / "root").mkdir(parents=True)
                fd = open_root(tmp / "root")
                try:
                    if fmt == "tar":
                        unpack(src, fd, self._limits)
                    else:
                        place_stream(fd, entrypoint, src, 0o555)
                    if not is_regular_file(fd, entrypoint):
                        raise ImagePullError(
                            f"entrypoint {entrypoint!r} missing from image {short}")
                finally:
                    os.close(fd)
                size = _disk_bytes(tmp / "root")
                self._write_meta(tmp, size)
                with self._lock:
                    shutil.rmtree(base, ignore_errors=True)
                    tmp.rename(base)
                    self._seq += 1
                    self._entries[base.name] = _Entry(size, time.time(), self._seq)
            except ArchiveError as err:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ImagePullError(f"image {short} refused: {err}") from None
            except OSError as err:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ImagePullError(
                    f"image {short} cannot be installed: {err.strerror}") from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return base / "root"
