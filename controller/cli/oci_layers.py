"""Applying image layers to a scratch root directory, and tarring the result.

Each layer is streamed (compressed bytes hashed, then decompressed and hashed again for its
diff id) through the tar member rules of ``node_agent.runtime.archive`` (one ``MemberChecker``
per layer: names, ``..``, absolute names, parents inside the layer, hard-link targets, member
types) and written into the root with openat-style calls that never follow anything on disk.
See controller.cli.oci for the rules as the user sees them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from controller.cli.oci_layout import ImportLimits, OciError, Source, reason_of, show
from node_agent.runtime.archive import (
    ArchiveError,
    Limits,
    MemberChecker,
    packing_filter,
    split_name,
)

__all__ = ["DIR_FLAGS", "Root", "apply_layer", "write_tar"]

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
            reason = reason_of(err)
        else:
            reason = "corrupt or truncated data"
        raise OciError(f"{what}: {reason}") from None


class Root:
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
            label = f"{what}: member {show(info.name)}"
            parts = split_name(info.name, label.split(": ", 1)[1])
            if len(parts) > self.limits.max_depth:
                raise OciError(f"{label}: deeper than {self.limits.max_depth} directories")
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
                    nxt = os.open(comp, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nxt = os.open(comp, DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    if not create:
                        os.close(fd)
                        return None
                    mode = _lstat_mode(fd, comp)
                    if not mode or stat.S_ISDIR(mode):
                        raise
                    kind = "symlink" if stat.S_ISLNK(mode) else "file"
                    raise OciError(f"{label}: parent {show('/'.join(parts[:i + 1]))} is a "
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
                    sub = os.open(name, DIR_FLAGS, dir_fd=parent)
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
                sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
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
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
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
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
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
                    raise OciError(f"{label}: hard link target {show(info.linkname)} is not "
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


def apply_layer(root: Root, src: Source, index: int, layer: tuple[str, str | None, int | None],
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


def write_tar(root: Path, dest: Path, limits: ImportLimits, mtimes: dict[str, int]) -> None:
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


