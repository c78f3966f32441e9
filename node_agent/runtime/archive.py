"""Strict tar handling for image roots and saved writable layers.

Every tar a node unpacks, and every tar the controller accepts at push, goes through one
member checker (``MemberChecker``), so what the push check accepts is exactly what a node
unpacks. The rules, member by member and in archive order:

* A name is relative, non-empty, free of NUL and of ``..`` components, at most 4095 bytes
  long with no component over 255 bytes (Linux's PATH_MAX and NAME_MAX). ``.`` components
  and repeated or trailing slashes are dropped; a name that is only the root (``./``) must be
  a directory and is otherwise ignored.
* Allowed types: regular files, directories, symlinks, and hard links whose target is an
  earlier regular file (or a hard link to one) of the same archive; FIFOs only where the
  limits allow them (a saved writable layer). Device nodes and anything else are refused, as
  is a setuid or setgid bit on any member.
* One entry per path: a second entry for a path already present is refused (a file over a
  directory or the reverse included). The only exception is a directory entry for a
  directory that an earlier member's path created implicitly.
* Every parent of a member is a directory of the archive (or one created implicitly for it):
  a member under a symlink or a file is refused, so unpacking never goes through a link.
* A symlink's target is data: any text (absolute targets too, as a root filesystem has them)
  up to 4095 bytes, neither empty nor holding NUL. It is written as is and never followed
  while unpacking; the guest sandbox interprets it inside the guest root at run time.
* Member count and total size are bounded (``Limits``); the size bound applies both to the
  uncompressed tar stream and to the sum of the regular files' sizes.

Unpacking writes into a directory handle with openat-style calls: each parent is opened with
O_DIRECTORY|O_NOFOLLOW from the destination's handle, files are created O_CREAT|O_EXCL|
O_NOFOLLOW, and nothing already on disk is ever followed. Ownership and timestamps are not
applied. Permission bits are masked to 0o777 (the sticky bit is dropped, not refused: it is
common on directories such as /tmp and means nothing the guest relies on); files always keep
owner read/write and directories owner rwx, so the node can read, fill and remove them.

Errors are ``ArchiveError``: one line naming the member (quoted), never a host path.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, BinaryIO, cast

from .fs import VIRTUAL_DEVICES, VIRTUAL_DIRS, WH_PREFIX

__all__ = [
    "ArchiveError", "Limits", "IMAGE_LIMITS", "Kind", "Member", "MemberTable", "MemberChecker",
    "validate", "unpack", "read_file", "open_root", "place_file", "place_stream",
    "is_regular_file",
    "packing_filter",
    "split_name",
]

NAME_MAX = 255
PATH_MAX = 4096          # with the terminating NUL: a path holds at most 4095 bytes
MAX_HOPS = 40            # symlinks followed while resolving a guest path, as the sandbox does
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(ValueError):
    """A refused archive or member; the message is one line without host paths."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one archive: members, and bytes (uncompressed stream and total file size).

    The defaults are the image bounds (a pushed image is at most 8 GiB, compressed or not).
    """

    max_members: int = 100_000
    max_bytes: int = 8 << 30
    #: FIFOs are allowed (a saved writable layer, where a guest's mkfifo left them: only a
    #: name, never opened on the host); an image refuses them.
    fifos: bool = False


IMAGE_LIMITS = Limits()


class Kind(Enum):
    FILE = "regular file"
    DIR = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    FIFO = "FIFO"


@dataclass(frozen=True, slots=True)
class Member:
    """An accepted member. ``index`` is its position among the archive's members (0-based),
    ``path`` its normalised relative path, ``target`` a symlink's text or a hard link's
    normalised target path."""

    index: int
    path: str
    kind: Kind
    mode: int
    size: int = 0
    target: str = ""


def _show(text: str) -> str:
    """A hostile name for an error message: quoted, escaped, shortened."""
    if len(text) > 96:
        text = text[:64] + "..." + text[-24:]
    return repr(text)


def _encoded_len(text: str, what: str) -> int:
    try:
        return len(os.fsencode(text))
    except UnicodeError:
        raise ArchiveError(f"{what}: not a valid file name") from None


def split_name(name: str, what: str) -> list[str]:
    """The components of a relative archive name; refuses what the rules refuse."""
    if not name:
        raise ArchiveError(f"{what}: empty name")
    if "\0" in name:
        raise ArchiveError(f"{what}: NUL in name")
    if name.startswith("/"):
        raise ArchiveError(f"{what}: absolute name")
    if _encoded_len(name, what) >= PATH_MAX:
        raise ArchiveError(f"{what}: name longer than {PATH_MAX - 1} bytes")
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            raise ArchiveError(f"{what}: '..' in name")
        if _encoded_len(comp, what) > NAME_MAX:
            raise ArchiveError(f"{what}: a name component is longer than {NAME_MAX} bytes")
        parts.append(comp)
    return parts


def _kind_of(info: tarfile.TarInfo, what: str, fifos: bool) -> Kind:
    if info.isreg():                      # regular, contiguous and sparse files
        return Kind.FILE
    if info.isdir():
        return Kind.DIR
    if info.issym():
        return Kind.SYMLINK
    if info.islnk():
        return Kind.HARDLINK
    if info.ischr() or info.isblk():
        raise ArchiveError(f"{what}: device nodes are not allowed")
    if info.isfifo():
        if fifos:
            return Kind.FIFO
        raise ArchiveError(f"{what}: FIFOs are not allowed")
    raise ArchiveError(f"{what}: unsupported member type {info.type!r}")


def _check_symlink_target(text: str, what: str) -> str:
    if not text:
        raise ArchiveError(f"{what}: empty symlink target")
    if "\0" in text:
        raise ArchiveError(f"{what}: NUL in symlink target")
    if _encoded_len(text, what) >= PATH_MAX:
        raise ArchiveError(f"{what}: symlink target longer than {PATH_MAX - 1} bytes")
    return text


# -- the member table -----------------------------------------------------------------------
_Node = tuple[str, str]        # ("dir" | "file" | "link" | "other", symlink text)


@dataclass
class MemberTable:
    """What an accepted archive holds. ``entries`` maps every path, explicit or created
    implicitly as a parent (``None``), to its member."""

    members: list[Member] = field(default_factory=list)
    entries: dict[str, Member | None] = field(default_factory=dict)

    def file_of(self, member: Member) -> Member:
        """The regular-file member a hard link (chain) ends at; a file is its own."""
        while member.kind is Kind.HARDLINK:
            found = self.entries[member.target]
            assert found is not None
            member = found
        return member

    def _lookup(self, parts: tuple[str, ...]) -> _Node | None:
        path = "/".join(parts)
        if path not in self.entries:
            return None
        member = self.entries[path]
        if member is None or member.kind is Kind.DIR:
            return ("dir", "")
        if member.kind is Kind.SYMLINK:
            return ("link", member.target)
        if member.kind is Kind.FIFO:
            return ("other", "")
        return ("file", "")

    def regular_file(self, guest_path: str) -> Member | None:
        """The regular file ``guest_path`` names in the guest (symlinks followed inside the
        archive, as the sandbox follows them), or None."""
        found = _resolve(guest_path, self._lookup)
        if found is None or found[0] != "file":
            return None
        member = self.entries["/".join(found[1])]
        assert member is not None
        return self.file_of(member)


class MemberChecker:
    """Applies the rules to one archive's members, in order; ``admit`` raises ArchiveError or
    returns the accepted member (None for an entry naming the root itself)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.count = 0
        self.total = 0
        self.root_seen = False
        self.table = MemberTable()

    def admit(self, info: tarfile.TarInfo) -> Member | None:
        self.count += 1
        if self.count > self.limits.max_members:
            raise ArchiveError(f"more than {self.limits.max_members} members")
        what = f"member {_show(info.name)}"
        parts = split_name(info.name, what)
        kind = _kind_of(info, what, self.limits.fifos)
        if info.mode & (stat.S_ISUID | stat.S_ISGID):
            raise ArchiveError(f"{what}: setuid and setgid bits are not allowed")
        if not parts:
            if kind is not Kind.DIR:
                raise ArchiveError(f"{what}: names the root but is a {kind.value}")
            if self.root_seen:
                raise ArchiveError(f"{what}: duplicate entry for the root")
            self.root_seen = True
            return None
        entries = self.table.entries
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            above = entries.get(parent)
            if above is not None and above.kind is not Kind.DIR:
                raise ArchiveError(f"{what}: parent {_show(parent)} is a {above.kind.value}")
        path = "/".join(parts)
        if path in entries and not (entries[path] is None and kind is Kind.DIR):
            raise ArchiveError(f"{what}: duplicate entry for {_show(path)}")
        size, target = 0, ""
        if kind is Kind.FILE:
            if info.size < 0:
                raise ArchiveError(f"{what}: negative size")
            size = info.size
            self.total += size
            if self.total > self.limits.max_bytes:
                raise ArchiveError(f"files larger than {self.limits.max_bytes} bytes in total")
        elif kind is Kind.SYMLINK:
            target = _check_symlink_target(info.linkname, what)
        elif kind is Kind.HARDLINK:
            target = "/".join(split_name(info.linkname, f"{what} (hard link target)"))
            earlier = entries.get(target)
            if earlier is None or earlier.kind not in (Kind.FILE, Kind.HARDLINK):
                raise ArchiveError(f"{what}: hard link target {_show(info.linkname)} is not "
                                   "an earlier regular file of the archive")
        member = Member(self.count - 1, path, kind, info.mode & 0o777, size, target)
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), None)
        entries[path] = member
        self.table.members.append(member)
        return member


# -- reading ------------------------------------------------------------------------------
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError,
                RecursionError, UnicodeError)


def packing_filter(limits: Limits) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    """A `tarfile.add` filter for archives we write (a pushed directory, a saved writable
    layer): no ownership, no special mode bits, and every member through the checker the
    reading side applies, so we never write what we would refuse to read."""
    checker = MemberChecker(limits)

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode &= 0o777
        checker.admit(info)
        return info

    return clean


@contextmanager
def _reading() -> Iterator[None]:
    """Turns any failure of the tar/decompression layers into a one-line ArchiveError."""
    try:
        yield
    except ArchiveError:
        raise
    except _READ_ERRORS as err:
        if isinstance(err, tarfile.TarError):
            reason = str(err).splitlines()[0][:120] if str(err) else "corrupt header"
        elif isinstance(err, RecursionError):
            reason = "too many nested headers"
        else:
            reason = "corrupt or truncated data"
        raise ArchiveError(f"not a valid tar archive: {reason}") from None


class _Limited:
    """Reads ``src`` with a byte bound; the first bytes may come from a peek buffer."""

    def __init__(self, src: BinaryIO, limit: int, head: bytes = b"") -> None:
        self.src, self.limit, self.head, self.seen = src, limit, head, 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.limit + 1 - self.seen
        if self.head:
            data, self.head = self.head[:n], self.head[n:]
        else:
            data = self.src.read(n)
        self.seen += len(data)
        if self.seen > self.limit:
            raise ArchiveError(f"archive larger than {self.limit} bytes")
        return data


def _tar_stream(src: BinaryIO, limits: Limits, compressed: bool) -> BinaryIO:
    """The uncompressed tar bytes of ``src`` (gzip, bzip2 and xz recognised if
    ``compressed``), bounded by ``limits.max_bytes``."""
    if not compressed:
        return cast(BinaryIO, _Limited(src, limits.max_bytes))
    head = src.read(6)
    raw = cast(BinaryIO, _Limited(src, 1 << 62, head))
    inner: BinaryIO
    if head.startswith(b"\x1f\x8b"):
        inner = cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    elif head.startswith(b"BZh"):
        inner = cast(BinaryIO, bz2.BZ2File(raw))
    elif head.startswith(b"\xfd7zXZ\x00"):
        inner = cast(BinaryIO, lzma.LZMAFile(raw))
    else:
        inner = raw
    return cast(BinaryIO, _Limited(inner, limits.max_bytes))


_Visit = Callable[[tarfile.TarFile, tarfile.TarInfo, Member], None]


def _walk(src: BinaryIO, limits: Limits, compressed: bool, visit: _Visit) -> MemberTable:
    """The one pass every reader shares: parse, check each member, hand it to ``visit``."""
    checker = MemberChecker(limits)
    with _reading():
        tar = tarfile.open(fileobj=_tar_stream(src, limits, compressed), mode="r|")
    with tar:
        while True:
            with _reading():
                info = tar.next()
            cast(Any, tar).members.clear()  # tarfile keeps every header; the table suffices
            if info is None:
                return checker.table
            member = checker.admit(info)
            if member is not None:
                visit(tar, info, member)


def _chunks(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Iterator[bytes]:
    with _reading():
        data = tar.extractfile(info)
    assert data is not None
    while True:
        with _reading():
            chunk = data.read(_CHUNK)
        if not chunk:
            return
        yield chunk


def _drain(tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member) -> None:
    if member.kind is Kind.FILE:
        for _ in _chunks(tar, info):
            pass


def validate(src: BinaryIO, limits: Limits = IMAGE_LIMITS, *,
             compressed: bool = True) -> MemberTable:
    """A dry run of ``unpack``: the same pass and checks (file data read and discarded),
    nothing written. Raises ArchiveError exactly where ``unpack`` would."""
    return _walk(src, limits, compressed, _drain)


class _Found(Exception):
    def __init__(self, data: bytes) -> None:
        self.data = data


def read_file(src: BinaryIO, member: Member, limits: Limits = IMAGE_LIMITS, *,
              compressed: bool = True) -> bytes:
    """The content of regular-file ``member`` of a table that ``validate`` returned for
    the same ``src`` content."""

    def visit(tar: tarfile.TarFile, info: tarfile.TarInfo, seen: Member) -> None:
        if seen.index == member.index and seen.kind is Kind.FILE:
            raise _Found(b"".join(_chunks(tar, info)))
        # other members' data is skipped by tarfile itself (validate read it already)

    try:
        _walk(src, limits, compressed, visit)
    except _Found as found:
        return found.data
    raise ArchiveError(f"member {_show(member.path)} is not a regular file of the archive")


# -- writing -------------------------------------------------------------------------------
def open_root(path: str | os.PathLike[str]) -> int:
    """A handle on destination directory ``path`` (not followed if it is a symlink)."""
    return os.open(path, _DIR_FLAGS)


def _open_dirs(root_fd: int, parts: list[str], create: bool) -> int:
    """A new handle on directory ``parts`` under ``root_fd``, walking each component with
    O_NOFOLLOW (missing ones made 0o755 if ``create``)."""
    fd = os.dup(root_fd)
    try:
        for comp in parts:
            try:
                nxt = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(comp, 0o700, dir_fd=fd)
                nxt = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(nxt, 0o755)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_new_file(parent: int, name: str, chunks: Iterator[bytes], mode: int) -> None:
    fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fchmod(fd, (mode & 0o777) | 0o600)
    finally:
        os.close(fd)


def _make_dir(parent: int, name: str, mode: int) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass                               # made implicitly for an earlier member
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        os.fchmod(fd, (mode & 0o777) | 0o700)
    finally:
        os.close(fd)


class _Writer:
    """Writes accepted members under ``root_fd``. The handle on the last parent directory
    is kept for the next member (archives list a directory's entries together); it stays
    valid because an accepted archive never replaces or removes what it wrote."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.parent: tuple[list[str], int] | None = None

    def _parent(self, parts: list[str]) -> int:
        if self.parent is not None and self.parent[0] == parts:
            return self.parent[1]
        fd = _open_dirs(self.root_fd, parts, create=True)
        self.close()
        self.parent = (parts, fd)
        return fd

    def close(self) -> None:
        if self.parent is not None:
            os.close(self.parent[1])
            self.parent = None

    def visit(self, tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member) -> None:
        parts = member.path.split("/")
        name = parts[-1]
        try:
            parent = self._parent(parts[:-1])
            if member.kind is Kind.FILE:
                _write_new_file(parent, name, _chunks(tar, info), member.mode)
            elif member.kind is Kind.DIR:
                _make_dir(parent, name, member.mode)
            elif member.kind is Kind.SYMLINK:
                os.symlink(member.target, name, dir_fd=parent)
            elif member.kind is Kind.FIFO:
                os.mkfifo(name, member.mode | 0o600, dir_fd=parent)
            else:
                target = member.target.split("/")
                source = _open_dirs(self.root_fd, target[:-1], create=False)
                try:
                    os.link(target[-1], name, src_dir_fd=source, dst_dir_fd=parent,
                            follow_symlinks=False)
                finally:
                    os.close(source)
        except OSError as err:
            reason = err.strerror or "write failed"
            raise ArchiveError(
                f"member {_show(member.path)}: cannot be written: {reason}") from None


def unpack(src: BinaryIO, root_fd: int, limits: Limits = IMAGE_LIMITS, *,
           compressed: bool = True) -> MemberTable:
    """Unpack the tar in ``src`` under directory handle ``root_fd`` (which should be empty),
    member by member. On ArchiveError part of the archive may be written: the caller
    removes the destination."""
    writer = _Writer(root_fd)
    try:
        return _walk(src, limits, compressed, writer.visit)
    finally:
        writer.close()


def place_file(root_fd: int, guest_path: str, data: bytes, mode: int) -> None:
    """Write ``data`` as a new file at absolute ``guest_path`` under ``root_fd`` (the same
    name rules and O_NOFOLLOW walk as unpacking)."""
    _place(root_fd, guest_path, iter((data,)), mode)


def place_stream(root_fd: int, guest_path: str, src: BinaryIO, mode: int) -> None:
    """place_file for content read from ``src`` to its end, a piece at a time."""
    _place(root_fd, guest_path, iter(lambda: src.read(_CHUNK), b""), mode)


def _place(root_fd: int, guest_path: str, chunks: Iterator[bytes], mode: int) -> None:
    what = f"path {_show(guest_path)}"
    if not guest_path.startswith("/"):
        raise ArchiveError(f"{what}: not absolute")
    parts = split_name(guest_path.lstrip("/") or ".", what)
    if not parts:
        raise ArchiveError(f"{what}: names the root")
    try:
        parent = _open_dirs(root_fd, parts[:-1], create=True)
        try:
            _write_new_file(parent, parts[-1], chunks, mode)
        finally:
            os.close(parent)
    except OSError as err:
        raise ArchiveError(f"{what}: cannot be written: {err.strerror}") from None


# -- guest path resolution -----------------------------------------------------------------
def _resolve(guest_path: str, lookup: Callable[[tuple[str, ...]], _Node | None]
             ) -> tuple[str, tuple[str, ...]] | None:
    """Resolve ``guest_path`` from the guest root the way the sandbox does (``..`` clamped
    at the root, absolute link targets restart at the root, at most MAX_HOPS links); returns
    (kind, components) of what it names, or None if it names nothing reachable."""
    if not guest_path or len(guest_path) >= PATH_MAX or "\0" in guest_path:
        return None
    pending = [p for p in guest_path.split("/") if p]
    pending.reverse()
    done: list[str] = []
    hops = 0
    node: _Node = ("dir", "")
    while pending:
        comp = pending.pop()
        if comp == ".":
            continue
        if comp == "..":
            if done:
                done.pop()
            node = ("dir", "")
            continue
        done.append(comp)
        gpath = "/" + "/".join(done)
        if gpath in VIRTUAL_DIRS:
            found: _Node | None = ("dir", "")
        elif gpath in VIRTUAL_DEVICES or gpath == "/proc/self/exe":
            found = ("other", "")          # the sandbox's own, never the image's
        elif comp.startswith(WH_PREFIX):
            found = None                   # whiteout names are invisible to the guest
        else:
            found = lookup(tuple(done))
        if found is None:
            return None
        if found[0] == "link":
            hops += 1
            if hops > MAX_HOPS:
                return None
            done.pop()
            if found[1].startswith("/"):
                done = []
            pending.extend(reversed([p for p in found[1].split("/") if p]))
            node = ("dir", "")
            continue
        if pending and found[0] != "dir":
            return None
        node = found
    if not done:
        return ("dir", ())
    return (node[0], tuple(done))


def _fs_lookup(root_fd: int) -> Callable[[tuple[str, ...]], _Node | None]:
    def lookup(parts: tuple[str, ...]) -> _Node | None:
        try:
            parent = _open_dirs(root_fd, list(parts[:-1]), create=False)
        except (OSError, ValueError):
            return None
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                return ("link", os.readlink(parts[-1], dir_fd=parent))
            if stat.S_ISDIR(st.st_mode):
                return ("dir", "")
            return ("file", "") if stat.S_ISREG(st.st_mode) else ("other", "")
        except (OSError, ValueError):
            return None
        finally:
            os.close(parent)

    return lookup


def is_regular_file(root_fd: int, guest_path: str) -> bool:
    """Whether ``guest_path`` names a regular file in the unpacked root ``root_fd``,
    following symlinks inside the root as the sandbox does, never the host's."""
    found = _resolve(guest_path, _fs_lookup(root_fd))
    return found is not None and found[0] == "file"
