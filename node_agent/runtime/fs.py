"""The sandboxed guest filesystem: a read-only lower layer under a writable upper layer.

Every guest path is resolved here, component by component, with ``..`` clamped at the guest
root and symlinks (absolute or relative) interpreted inside the guest's namespace. Resolution
and the operation itself happen in one call, under one lock, through directory descriptors held
from the walk (overlay_dirs.py): each layer's root is opened once, every component is entered
with ``O_PATH|O_DIRECTORY|O_NOFOLLOW``, the final step uses ``dir_fd=`` and never follows a
link, and files are modified only through descriptors opened ``O_NOFOLLOW``. No host path is
built and acted on later, so a guest thread renaming a symlink to a host path over a file
cannot redirect another thread's call to the host.

The upper layer's size is bounded by an UpperQuota (upper_quota.py). Modes and owners the
guest sets are kept in a MetaTable (metadata.py), never on the host inode. Paths under /proc
are served by a ProcFs (procfs.py): generated, read-only, never the host's /proc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from .files import DeviceFile, DirFile, FifoNode, HostFile, OpenFile, StatInfo
from .metadata import Meta, MetaTable, host_perm
from .overlay_dirs import (
    EXE_LINK,
    NAME_MAX,
    O_DIR,
    OPAQUE,
    VIRTUAL_DEVICES,
    VIRTUAL_DIRS,
    WH_PREFIX,
    Entry,
    FdScope,
    Level,
    descend,
    err,
    lookup,
    lstat_at,
    merged_entries,
    scan_dir,
)
from .procfs import ProcDir, ProcFile, ProcFs, under_proc
from .upper_quota import DEFAULT_DISK_BYTES, ENTRY_COST, UpperQuota

__all__ = ["Sandbox", "VIRTUAL_DEVICES", "VIRTUAL_DIRS", "WH_PREFIX", "PATH_MAX"]

PATH_MAX = 4096
MAX_HOPS = 40
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
O_ACCMODE, O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 3, 0o100, 0o200, 0o1000, 0o2000
O_DIRECTORY, O_NOFOLLOW = 0o200000, 0o400000
_O_FILE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # host flags for every guest file


@dataclass
class Node:
    """A walked guest path: the directories down to its parent, and the entry (None: root)."""

    stack: list[Level]
    entry: Entry | None

    @property
    def gpath(self) -> str:
        return "/" if self.entry is None else self.entry.gpath


def _parts(gpath: str) -> list[str]:
    return [p for p in gpath.split("/") if p]


def _name_cost(st: os.stat_result) -> int:
    """What a name costs beyond the inode's bytes: the entry, plus a symlink's text."""
    return ENTRY_COST + (st.st_size if stat.S_ISLNK(st.st_mode) else 0)


def _open_root(path: Path, required: bool) -> int | None:
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if required:
            raise OSError(exc.errno, "the partition's writable layer cannot be opened") from None
        return None


def _key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _keys(entry: Entry) -> list[tuple[int, int]]:
    """The host inodes a name stands for (its upper and lower entries)."""
    return [_key(st) for st in (entry.upper, entry.lower) if st is not None]


def _fill_times(st: os.stat_result, times: tuple[int | None, int | None]) -> tuple[int, int]:
    atime, mtime = times
    return (st.st_atime_ns if atime is None else atime,
            st.st_mtime_ns if mtime is None else mtime)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> None:
    """renameat2(2), which os.rename cannot pass flags to."""
    if _libc.renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags) != 0:
        raise err(ctypes.get_errno())


def _close_fds(fds: list[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


class Sandbox:
    """Guest path operations on the overlay; paths in and out are guest paths (str)."""

    def __init__(self, lower: Path, upper: Path, exe: str,
                 disk_bytes: int | None = None) -> None:
        self.lower = str(lower)
        self.upper = str(upper)
        self.exe = exe
        self.lock = threading.RLock()
        self._lower_fd = _open_root(Path(lower), required=False)
        upper_fd = _open_root(Path(upper), required=True)
        assert upper_fd is not None
        self._upper_fd = upper_fd
        self.quota = UpperQuota(upper_fd, DEFAULT_DISK_BYTES if disk_bytes is None
                                else disk_bytes)
        self._limit_given = disk_bytes is not None
        self.meta = MetaTable(upper_fd, self.quota)
        self.procfs = ProcFs(self)
        self.bound = False
        weakref.finalize(self, _close_fds, [self._lower_fd, self._upper_fd])

    def bind(self, disk_bytes: int, files: Iterable[OpenFile]) -> None:
        """Take the partition's quota (unless the constructor had one) and account ``files``,
        the open files of the partition (a restore reopens them without the quota)."""
        with self.lock:
            if self.bound:
                return
            if not self._limit_given:
                self.quota.limit = disk_bytes
            for file in files:
                if isinstance(file, HostFile) and file.quota is None:
                    file.attach(self.quota)
            self.bound = True

    # -- walking -------------------------------------------------------------------------------
    @contextmanager
    def _op(self) -> Iterator[FdScope]:
        with self.lock:
            scope = FdScope()
            try:
                yield scope
            finally:
                scope.close()

    def _root(self) -> Level:
        return Level("/", "", self._upper_fd, self._lower_fd)

    def _walk(self, scope: FdScope, path: str, base: str, follow: bool) -> Node:
        """Resolve ``path`` (relative to the guest directory ``base``) to a Node."""
        if not path:
            raise err(errno.ENOENT)
        if len(os.fsencode(path)) >= PATH_MAX:
            raise err(errno.ENAMETOOLONG)
        pending = _parts(path if path.startswith("/") else base + "/" + path)
        pending.reverse()
        stack = [self._root()]
        entry: Entry | None = None
        hops = 0
        while pending:
            comp = pending.pop()
            if comp == ".":
                continue
            if comp == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            if len(os.fsencode(comp)) > NAME_MAX:
                raise err(errno.ENAMETOOLONG)
            found = self._lookup(stack[-1], comp)
            last = not pending
            if found.is_link and (follow or not last):
                hops += 1
                if hops > MAX_HOPS:
                    raise err(errno.ELOOP)
                target = self._link_text(found)
                if target.startswith("/"):
                    del stack[1:]
                pending.extend(reversed(_parts(target)))
                continue
            if last:
                entry = found
                break
            if not found.exists:
                raise err(errno.ENOENT)
            if not found.is_dir:
                raise err(errno.ENOTDIR)
            stack.append(descend(scope, found))
        if entry is None and len(stack) > 1:
            # the path ended in a directory (".", "..", a link to a directory): name it
            # from its parent, as every other node is named
            level = stack.pop()
            entry = self._lookup(stack[-1], level.name)
        return Node(stack, entry)

    def _lookup(self, level: Level, name: str) -> Entry:
        """lookup(), except that everything under /proc comes from the ProcFs."""
        gpath = level.child(name)
        if under_proc(gpath):
            kind = self.procfs.kind(gpath)
            return Entry(level, name, gpath, None, None, False, kind)
        return lookup(level, name)

    def _link_text(self, entry: Entry) -> str:
        if entry.virtual == "exe":
            return self.exe
        if entry.virtual == "link":
            return self.procfs.link(entry.gpath)
        return os.readlink(entry.name, dir_fd=entry.layer_fd)

    def _ensure_upper(self, scope: FdScope, stack: list[Level]) -> None:
        """Give every directory of ``stack`` an upper-layer directory (copying modes)."""
        for i in range(1, len(stack)):
            level = stack[i]
            if level.upper is not None:
                continue
            if under_proc(level.gpath):
                raise err(errno.EACCES)
            parent = stack[i - 1].upper
            assert parent is not None
            mode = 0o755 if level.lower is None else os.fstat(level.lower).st_mode & 0o7777
            self.quota.reserve(ENTRY_COST)
            try:
                os.mkdir(level.name, host_perm(mode, True), dir_fd=parent)
            except FileExistsError:
                self.quota.refund(ENTRY_COST)      # made by an earlier step of this call
                level.upper = scope.open_dir(parent, level.name)
                continue
            except BaseException:
                self.quota.refund(ENTRY_COST)
                raise
            level.upper = scope.open_dir(parent, level.name)
            self.meta.created(os.fstat(level.upper), mode, level.gpath)

    def _prepare_create(self, scope: FdScope, node: Node) -> int:
        """The upper directory fd where ``node``'s name can be created (whiteout removed)."""
        entry = node.entry
        assert entry is not None
        if entry.name.startswith(WH_PREFIX) or under_proc(entry.gpath):
            raise err(errno.EACCES)
        self._ensure_upper(scope, node.stack)
        up = entry.parent.upper
        assert up is not None
        self._drop_whiteout(up, entry.name)
        return up

    def _drop_whiteout(self, up: int, name: str) -> None:
        st = lstat_at(up, WH_PREFIX + name)
        if st is not None:
            os.unlink(WH_PREFIX + name, dir_fd=up)
            self.quota.name_removed(st)

    def _mark(self, dir_fd: int, name: str) -> None:
        """Create the empty marker file ``name`` (a whiteout or OPAQUE) in ``dir_fd``."""
        if lstat_at(dir_fd, name) is not None:
            return
        self.quota.reserve(ENTRY_COST, force=True)
        try:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_FILE, 0o600,
                             dir_fd=dir_fd))
        except BaseException:
            self.quota.refund(ENTRY_COST)
            raise

    def _whiteout(self, scope: FdScope, node: Node) -> None:
        entry = node.entry
        assert entry is not None
        self._ensure_upper(scope, node.stack)
        assert entry.parent.upper is not None
        self._mark(entry.parent.upper, WH_PREFIX + entry.name)

    def _in_lower(self, entry: Entry) -> bool:
        """Whether the lower layer has ``entry``'s name where this directory shows it."""
        return lstat_at(entry.parent.lower, entry.name) is not None

    # -- copy-up -------------------------------------------------------------------------------
    def _copy_up(self, scope: FdScope, node: Node) -> Entry:
        """Make the visible entry of ``node`` live in the upper layer; return it fresh."""
        entry = node.entry
        if entry is None or entry.virtual is not None:
            raise err(errno.EACCES)
        if entry.in_upper:
            return entry
        low = entry.lower
        if low is None:
            raise err(errno.ENOENT)
        self._ensure_upper(scope, node.stack)
        up, lower_dir, name = entry.parent.upper, entry.parent.lower, entry.name
        assert up is not None and lower_dir is not None
        if stat.S_ISLNK(low.st_mode):
            target = os.readlink(name, dir_fd=lower_dir)
            self.quota.reserve(ENTRY_COST + len(os.fsencode(target)))
            try:
                os.symlink(target, name, dir_fd=up)
            except BaseException:
                self.quota.refund(ENTRY_COST + len(os.fsencode(target)))
                raise
        elif stat.S_ISDIR(low.st_mode):
            self.quota.reserve(ENTRY_COST)
            try:
                os.mkdir(name, host_perm(low.st_mode, True), dir_fd=up)
            except BaseException:
                self.quota.refund(ENTRY_COST)
                raise
            os.utime(name, ns=(low.st_atime_ns, low.st_mtime_ns), dir_fd=up,
                     follow_symlinks=False)
        elif stat.S_ISREG(low.st_mode):
            self._copy_file(lower_dir, up, name)
        else:
            raise err(errno.EACCES)
        node.entry = lookup(entry.parent, name)
        assert node.entry.upper is not None
        self.meta.created(node.entry.upper, low.st_mode, node.entry.gpath)
        return node.entry

    def _copy_file(self, lower_dir: int, up: int, name: str) -> None:
        src = os.open(name, os.O_RDONLY | _O_FILE, dir_fd=lower_dir)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise err(errno.EACCES)
            cost = ENTRY_COST + st.st_size
            self.quota.reserve(cost)
            try:
                dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_FILE, 0o600,
                              dir_fd=up)
                try:
                    offset = 0
                    while offset < st.st_size:
                        sent = os.sendfile(dst, src, offset, min(st.st_size - offset, 1 << 24))
                        if sent <= 0:
                            break
                        offset += sent
                    os.fchmod(dst, host_perm(st.st_mode, False))
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dst)
            except BaseException:
                self.quota.refund(cost)
                try:
                    os.unlink(name, dir_fd=up)
                except OSError:
                    pass
                raise
        finally:
            os.close(src)

    def _copy_tree_up(self, scope: FdScope, node: Node) -> None:
        """Copy a directory and everything the lower layer shows inside it into the upper."""
        work = [node]
        while work:
            cur = work.pop()
            entry = self._copy_up(scope, cur)
            if not entry.is_dir:
                continue
            level = descend(scope, entry)
            if level.lower is None:
                continue
            stack = [*cur.stack, level]
            for name, _dtype, _ino in merged_entries(level):
                child = lookup(level, name)
                if child.virtual is None and (child.lower is not None or not child.in_upper):
                    work.append(Node(stack, child))

    # -- reading -------------------------------------------------------------------------------
    def _root_stat(self) -> os.stat_result:
        """The root's stat: the image's until the upper layer holds something."""
        if self._lower_fd is None or next(iter(scan_dir(self._upper_fd)), None) is not None:
            return os.fstat(self._upper_fd)
        return os.fstat(self._lower_fd)

    def _info(self, node: Node) -> StatInfo:
        entry = node.entry
        if entry is None:
            return StatInfo.from_host(self._root_stat())
        if entry.virtual == "dev":
            major, minor = VIRTUAL_DEVICES[entry.gpath]
            return StatInfo.synthetic(stat.S_IFCHR | 0o666, rdev=(major << 8) | minor)
        if entry.virtual == "dir":
            return StatInfo.synthetic(stat.S_IFDIR | 0o555, ino=2)
        if entry.virtual == "exe":
            return StatInfo.synthetic(stat.S_IFLNK | 0o777, ino=3)
        if entry.virtual is not None:
            return self.procfs.info(entry.gpath)
        if entry.st is None:
            raise err(errno.ENOENT)
        return self.host_info(entry.st, entry.in_upper)

    def host_info(self, st: os.stat_result, upper: bool) -> StatInfo:
        """The guest's stat of a host inode: an upper one's mode and owner from the table."""
        info = StatInfo.from_host(st)
        if not upper:
            return info
        mode, uid, gid = self.meta.apply(st)
        return replace(info, mode=mode, uid=uid, gid=gid)

    def stat_at(self, path: str, base: str, follow: bool = True) -> StatInfo:
        """stat (``follow``) or lstat of a guest path."""
        with self._op() as scope:
            return self._info(self._walk(scope, path, base, follow))

    def access_at(self, path: str, base: str, follow: bool = True) -> None:
        """ENOENT (or the walk's error) unless the path exists."""
        with self._op() as scope:
            node = self._walk(scope, path, base, follow)
            if node.entry is not None and not node.entry.exists:
                raise err(errno.ENOENT)

    def readlink_at(self, path: str, base: str) -> str:
        with self._op() as scope:
            entry = self._walk(scope, path, base, follow=False).entry
            if entry is None:
                raise err(errno.EINVAL)
            if not entry.exists:
                raise err(errno.ENOENT)
            if not entry.is_link:
                raise err(errno.EINVAL)
            return self._link_text(entry)

    def chdir_at(self, path: str, base: str) -> str:
        """The guest path of the directory ``path`` names (for a new working directory)."""
        with self._op() as scope:
            node = self._walk(scope, path, base, follow=True)
            if node.entry is not None and not node.entry.exists:
                raise err(errno.ENOENT)
            if node.entry is not None and not node.entry.is_dir:
                raise err(errno.ENOTDIR)
            return node.gpath

    # -- opening -------------------------------------------------------------------------------
    def open(self, path: str, base: str, flags: int, mode: int) -> OpenFile:
        """open(2): a DeviceFile, a DirFile (a snapshot of the merged listing) or a HostFile
        whose host descriptor was opened O_NOFOLLOW relative to the held parent directory."""
        follow = not flags & O_NOFOLLOW and not (flags & O_CREAT and flags & O_EXCL)
        with self._op() as scope:
            node = self._walk(scope, path, base, follow)
            entry = node.entry
            if entry is not None and entry.virtual == "dev":
                return DeviceFile(flags, entry.gpath, VIRTUAL_DEVICES[entry.gpath])
            if entry is not None and under_proc(entry.gpath) and entry.exists:
                if entry.is_dir:
                    if flags & O_ACCMODE:
                        raise err(errno.EISDIR)
                    return ProcDir(flags, entry.gpath, self.procfs, self._info(node))
                if flags & (O_ACCMODE | O_TRUNC):
                    raise err(errno.EACCES)
                if flags & O_DIRECTORY:
                    raise err(errno.ENOTDIR)
                return ProcFile(flags, entry.gpath, self.procfs.content(entry.gpath),
                                self._info(node))
            if entry is None or entry.is_dir:
                if flags & O_ACCMODE:
                    raise err(errno.EISDIR)
                level = node.stack[-1] if entry is None else descend(scope, entry)
                return DirFile(flags, node.gpath, merged_entries(level), self._info(node))
            if flags & O_DIRECTORY:
                raise err(errno.ENOTDIR if entry.exists else errno.ENOENT)
            if not entry.exists:
                if not flags & O_CREAT:
                    raise err(errno.ENOENT)
                self._create_file(scope, node, mode)
                entry = node.entry
                assert entry is not None
            elif flags & O_CREAT and flags & O_EXCL:
                raise err(errno.EEXIST)
            if entry.is_link:
                raise err(errno.ELOOP)
            special = entry.st
            if special is not None and stat.S_ISFIFO(special.st_mode):   # never a host open
                return FifoNode(flags, entry.gpath, (special.st_dev, special.st_ino))
            if special is not None and stat.S_ISSOCK(special.st_mode):
                raise err(errno.ENXIO)
            if flags & (O_ACCMODE | O_TRUNC):
                entry = self._copy_up(scope, node)
            fd = os.open(entry.name, (flags & (O_ACCMODE | O_APPEND)) | _O_FILE,
                         dir_fd=entry.layer_fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise err(errno.EACCES)
                if flags & O_TRUNC:
                    self._truncate_entry(entry, 0)
                return HostFile(fd, flags, entry.gpath, self.quota)
            except BaseException:
                os.close(fd)
                raise

    def _create_file(self, scope: FdScope, node: Node, mode: int) -> None:
        up = self._prepare_create(scope, node)
        assert node.entry is not None
        name = node.entry.name
        self.quota.reserve(ENTRY_COST)
        try:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_FILE,
                         host_perm(mode, False), dir_fd=up)
        except BaseException:
            self.quota.refund(ENTRY_COST)
            raise
        try:
            os.fchmod(fd, host_perm(mode, False))      # the host umask may have cut bits
            self.meta.created(os.fstat(fd), mode, node.entry.gpath)
        finally:
            os.close(fd)
        node.entry = lookup(node.entry.parent, name)

    def _truncate_entry(self, entry: Entry, length: int) -> None:
        fd = os.open(entry.name, os.O_WRONLY | _O_FILE, dir_fd=entry.parent.upper)
        try:
            self.quota.resize(fd, length)
        finally:
            os.close(fd)

    def truncate(self, path: str, base: str, length: int) -> None:
        """truncate(2): copy up, then ftruncate a descriptor opened O_NOFOLLOW."""
        with self._op() as scope:
            node = self._walk(scope, path, base, follow=True)
            entry = node.entry
            if entry is None or entry.is_dir:
                raise err(errno.EISDIR)
            if entry.virtual is not None:
                raise err(errno.EINVAL)
            if not entry.exists:
                raise err(errno.ENOENT)
            if length < 0:
                raise err(errno.EINVAL)
            self._truncate_entry(self._copy_up(scope, node), length)

    # -- changing names ------------------------------------------------------------------------
    def remove_at(self, path: str, base: str, is_dir: bool) -> None:
        """unlink (``is_dir`` False) or rmdir in the merged view."""
        with self._op() as scope:
            self._remove(scope, self._walk(scope, path, base, follow=False), is_dir)

    def _remove(self, scope: FdScope, node: Node, is_dir: bool) -> None:
        entry = node.entry
        if entry is None or entry.virtual is not None:
            raise err(errno.EBUSY if is_dir else errno.EACCES)
        if not entry.exists:
            raise err(errno.ENOENT)
        if is_dir != entry.is_dir:
            raise err(errno.ENOTDIR if is_dir else errno.EISDIR)
        inside = descend(scope, entry) if is_dir else None
        if inside is not None and merged_entries(inside):
            raise err(errno.ENOTEMPTY)
        up = entry.parent.upper
        if entry.upper is not None:
            assert up is not None
            if inside is not None and inside.upper is not None:
                self._clear(inside.upper)
                os.rmdir(entry.name, dir_fd=up)
            else:
                os.unlink(entry.name, dir_fd=up)
            self.quota.name_removed(entry.upper)
            if entry.upper.st_nlink <= 1 or stat.S_ISDIR(entry.upper.st_mode):
                self.meta.drop(entry.upper)
        if self._in_lower(entry):
            self._whiteout(scope, node)

    def _clear(self, dir_fd: int) -> None:
        """Delete what an empty-looking upper directory holds (whiteouts, opaque marker)."""
        for name, st in list(scan_dir(dir_fd)):
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, O_DIR, dir_fd=dir_fd)
                try:
                    self._clear(sub)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
            self.quota.name_removed(st)

    def mkdir_at(self, path: str, base: str, mode: int) -> None:
        with self._op() as scope:
            node = self._walk(scope, path, base, follow=False)
            entry = node.entry
            if entry is None or entry.exists:
                raise err(errno.EEXIST)
            had_whiteout = lstat_at(entry.parent.upper, WH_PREFIX + entry.name) is not None
            up = self._prepare_create(scope, node)
            self.quota.reserve(ENTRY_COST)
            try:
                os.mkdir(entry.name, host_perm(mode, True), dir_fd=up)
            except BaseException:
                self.quota.refund(ENTRY_COST)
                raise
            made = scope.open_dir(up, entry.name)
            self.meta.created(os.fstat(made), mode, entry.gpath)
            if had_whiteout:
                self._mark(made, OPAQUE)

    def mknod_at(self, path: str, base: str, mode: int) -> None:
        """mknod(2) of a FIFO or a socket node in the upper layer (no devices): only a name;
        the runtime never opens it on the host (open gives a FifoNode, bind keys on it)."""
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK):
            raise err(errno.EPERM)
        with self._op() as scope:
            node = self._walk(scope, path, base, follow=False)
            entry = node.entry
            if entry is None or entry.exists:
                raise err(errno.EEXIST)
            up = self._prepare_create(scope, node)
            self.quota.reserve(ENTRY_COST)
            try:
                os.mknod(entry.name, kind | (mode & 0o777), dir_fd=up)
            except BaseException:
                self.quota.refund(ENTRY_COST)
                raise

    def symlink_at(self, target: str, path: str, base: str) -> None:
        if not target:
            raise err(errno.ENOENT)
        if len(os.fsencode(target)) >= PATH_MAX:
            raise err(errno.ENAMETOOLONG)
        with self._op() as scope:
            node = self._walk(scope, path, base, follow=False)
            entry = node.entry
            if entry is None or entry.exists:
                raise err(errno.EEXIST)
            up = self._prepare_create(scope, node)
            cost = ENTRY_COST + len(os.fsencode(target))
            self.quota.reserve(cost)
            try:
                os.symlink(target, entry.name, dir_fd=up)
            except BaseException:
                self.quota.refund(cost)
                raise
            made = lstat_at(up, entry.name)
            if made is not None:
                self.meta.drop(made)

    def link_at(self, old: str, old_base: str, new: str, new_base: str, follow: bool,
                inode: tuple[int, int] | None = None) -> None:
        """link(2)/linkat(2): a hard link in the upper layer (the source copied up first).
        ``inode``: the source must be that host inode (linkat AT_EMPTY_PATH of an open file,
        named by its guest path), else ENOENT."""
        with self._op() as scope:
            src = self._walk(scope, old, old_base, follow)
            dst = self._walk(scope, new, new_base, follow=False)
            if src.entry is None or src.entry.is_dir:
                raise err(errno.EPERM)
            if not src.entry.exists:
                raise err(errno.ENOENT)
            if src.entry.virtual is not None:
                raise err(errno.EXDEV)
            if inode is not None and inode not in _keys(src.entry):
                raise err(errno.ENOENT)
            if dst.entry is None or dst.entry.exists:
                raise err(errno.EEXIST)
            source = self._copy_up(scope, src)
            up = self._prepare_create(scope, dst)
            assert source.upper is not None
            cost = _name_cost(source.upper)
            self.quota.reserve(cost)
            try:
                os.link(source.name, dst.entry.name, src_dir_fd=source.parent.upper,
                        dst_dir_fd=up, follow_symlinks=False)
            except BaseException:
                self.quota.refund(cost)
                raise

    def rename_at(self, old: str, old_base: str, new: str, new_base: str,
                  flags: int = 0) -> None:
        """rename(2)/renameat2(2) (RENAME_NOREPLACE, RENAME_EXCHANGE) in the merged view."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or \
                flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) == \
                RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise err(errno.EINVAL)
        with self._op() as scope:
            src = self._walk(scope, old, old_base, follow=False)
            dst = self._walk(scope, new, new_base, follow=False)
            if flags & RENAME_EXCHANGE:
                self._exchange(scope, src, dst)
            else:
                self._rename(scope, src, dst, bool(flags & RENAME_NOREPLACE))

    def _exchange(self, scope: FdScope, a: Node, b: Node) -> None:
        """RENAME_EXCHANGE: both names copied up whole, swapped by the host atomically; a
        directory that lands on a name the lower layer also has is marked opaque."""
        ae, be = a.entry, b.entry
        if ae is None or be is None or ae.virtual is not None or be.virtual is not None:
            raise err(errno.EBUSY)
        if not ae.exists or not be.exists:
            raise err(errno.ENOENT)
        if ae.gpath == be.gpath:
            return
        if (be.gpath + "/").startswith(ae.gpath + "/") or \
                (ae.gpath + "/").startswith(be.gpath + "/"):
            raise err(errno.EINVAL)
        for node in (a, b):
            assert node.entry is not None
            if node.entry.is_dir:
                self._copy_tree_up(scope, node)
            self._copy_up(scope, node)
        # the second copy-up may have created parents the first walk saw as lower-only
        ae = lookup(a.entry.parent, ae.name) if a.entry is not None else ae
        be = lookup(b.entry.parent, be.name) if b.entry is not None else be
        assert ae.parent.upper is not None and be.parent.upper is not None
        _renameat2(ae.parent.upper, ae.name, be.parent.upper, be.name, RENAME_EXCHANGE)
        for entry in (ae, be):
            up = entry.parent.upper
            assert up is not None
            now = lstat_at(up, entry.name)
            if now is not None and stat.S_ISDIR(now.st_mode) and self._in_lower(entry):
                self._mark(scope.open_dir(up, entry.name), OPAQUE)

    # -- metadata ------------------------------------------------------------------------
    def change_at(self, path: str, base: str, follow: bool, perm: int | None = None,
                  owner: tuple[int, int] | None = None,
                  times: tuple[int | None, int | None] | None = None) -> None:
        """chmod (``perm``), chown (``owner``: uid, gid, -1 keeps) and utimensat (``times``:
        atime, mtime in ns, None keeps) of a guest path; a lower entry is copied up first."""
        with self._op() as scope:
            node = self._walk(scope, path, base, follow)
            entry = node.entry
            if entry is not None and not entry.exists:
                raise err(errno.ENOENT)
            if entry is None or entry.virtual is not None:
                if perm is None and owner is None:
                    return                  # touching the root or /proc: nothing to keep
                raise err(errno.EPERM)
            entry = self._copy_up(scope, node)
            self._change(entry, perm, owner, times)

    def change_file(self, file: OpenFile, perm: int | None = None,
                    owner: tuple[int, int] | None = None,
                    times: tuple[int | None, int | None] | None = None) -> None:
        """fchmod/fchown/futimens of an open file: the entry its guest path names, if it is
        still the file's inode (copied up if it is the lower one), else EPERM for a change
        the sandbox cannot place. A directory is named by its path alone."""
        with self._op() as scope:
            if not isinstance(file, (HostFile, DirFile)) or under_proc(file.gpath):
                if perm is None and owner is None:
                    return
                raise err(errno.EPERM)
            node = self._walk(scope, file.gpath, "/", follow=False)
            entry = node.entry
            if entry is None or not entry.exists or entry.virtual is not None:
                raise err(errno.EPERM)
            if isinstance(file, HostFile):
                if _key(os.fstat(file.fd)) not in _keys(entry):
                    raise err(errno.EPERM)
            elif not entry.is_dir:
                raise err(errno.EPERM)
            self._change(self._copy_up(scope, node), perm, owner, times)

    def _change(self, entry: Entry, perm: int | None, owner: tuple[int, int] | None,
                times: tuple[int | None, int | None] | None) -> None:
        st, up = entry.upper, entry.parent.upper
        assert st is not None and up is not None
        is_dir, is_link = stat.S_ISDIR(st.st_mode), stat.S_ISLNK(st.st_mode)
        old = self.meta.get(st) or Meta(st.st_mode & 0o7777, 0, 0)
        new = old
        if perm is not None and not is_link:
            new = replace(new, perm=perm & 0o7777)
        if owner is not None:
            uid, gid = owner
            new = replace(new, uid=old.uid if uid == -1 else uid,
                          gid=old.gid if gid == -1 else gid)
            if not is_dir and (uid != -1 or gid != -1):
                # Linux drops setuid (and setgid of a group-executable file) on chown
                kill = 0o4000 | (0o2000 if new.perm & 0o010 else 0)
                new = replace(new, perm=new.perm & ~kill)
        if is_link:
            if times is not None:
                os.utime(entry.name, ns=_fill_times(st, times), dir_fd=up,
                         follow_symlinks=False)
            if new != old:
                self.meta.set(st, new, entry.gpath)
            return
        fd = os.open(entry.name, (os.O_RDONLY | os.O_DIRECTORY if is_dir else os.O_RDONLY)
                     | _O_FILE, dir_fd=up)
        try:
            now = os.fstat(fd)
            if _key(now) != _key(st):
                raise err(errno.ENOENT)
            if new.perm != old.perm:
                os.fchmod(fd, host_perm(new.perm, is_dir))
            if times is not None:
                os.utime(fd, ns=_fill_times(now, times))
            if new != old or self.meta.get(now) is None and new.perm != now.st_mode & 0o7777:
                self.meta.set(now, new, entry.gpath)
        finally:
            os.close(fd)

    def file_info(self, file: HostFile) -> StatInfo:
        """fstat of an open file, with the mode and owner the guest gave its inode."""
        st = os.fstat(file.fd)
        return self.host_info(st, self.meta.get(st) is not None)

    def _rename(self, scope: FdScope, src: Node, dst: Node, noreplace: bool) -> None:
        se, de = src.entry, dst.entry
        if se is None or de is None or se.virtual is not None or de.virtual is not None:
            raise err(errno.EBUSY)
        if not se.exists:
            raise err(errno.ENOENT)
        if se.gpath == de.gpath:
            return
        if (de.gpath + "/").startswith(se.gpath + "/"):
            raise err(errno.EINVAL)
        if de.exists:
            if noreplace:
                raise err(errno.EEXIST)
            if de.is_dir and not se.is_dir:
                raise err(errno.EISDIR)
            if se.is_dir and not de.is_dir:
                raise err(errno.ENOTDIR)
            if de.is_dir and merged_entries(descend(scope, de)):
                raise err(errno.ENOTEMPTY)
        moved_dir = se.is_dir
        if moved_dir:
            self._copy_tree_up(scope, src)
        self._copy_up(scope, src)
        se = src.entry
        assert se is not None and se.upper is not None and se.parent.upper is not None
        if de.exists and de.is_dir:
            self._remove(scope, dst, True)
        up = self._prepare_create(scope, dst)
        replaced = lstat_at(up, de.name)
        if replaced is not None and (replaced.st_dev, replaced.st_ino) == \
                (se.upper.st_dev, se.upper.st_ino):
            return                              # two names of one inode: rename does nothing
        os.rename(se.name, de.name, src_dir_fd=se.parent.upper, dst_dir_fd=up)
        if replaced is not None:
            self.quota.name_removed(replaced)
        if moved_dir and self._in_lower(de):
            self._mark(scope.open_dir(up, de.name), OPAQUE)
        if self._in_lower(se):
            self._whiteout(scope, src)

    # -- the guest-path API (resolved, normalised paths; final symlinks not followed) -----------
    def resolve(self, path: str, cwd: str, follow: bool = True) -> str:
        """Normalise ``path`` to an absolute, symlink-free guest path inside the sandbox."""
        with self._op() as scope:
            return self._walk(scope, path, cwd, follow).gpath

    def is_virtual(self, gpath: str) -> bool:
        return gpath in VIRTUAL_DEVICES or gpath in VIRTUAL_DIRS or gpath == EXE_LINK

    def host_path(self, gpath: str) -> tuple[str, bool] | None:
        """(host path, is_upper) of the entry visible at ``gpath``, or None.

        Only for the boot and a restore, before any guest thread runs: a host path used
        later can be redirected by a guest rename. The syscall layer never uses it."""
        try:
            with self._op() as scope:
                entry = self._walk(scope, gpath, "/", follow=False).entry
        except OSError:
            return None
        if entry is None:
            return self.upper, True
        if entry.st is None:
            return None
        root = self.upper if entry.in_upper else self.lower
        return os.path.join(root, *_parts(entry.gpath)), entry.in_upper

    def exists(self, gpath: str) -> bool:
        try:
            self.access_at(gpath, "/", follow=False)
        except OSError:
            return False
        return True

    def is_dir(self, gpath: str) -> bool:
        try:
            with self._op() as scope:
                entry = self._walk(scope, gpath, "/", follow=False).entry
        except OSError:
            return False
        return entry is None or entry.is_dir

    def lstat(self, gpath: str) -> os.stat_result:
        """Host lstat of the visible entry (virtual entries are handled by the caller)."""
        with self._op() as scope:
            entry = self._walk(scope, gpath, "/", follow=False).entry
            if entry is None:
                return self._root_stat()
            if entry.st is None:
                raise err(errno.ENOENT)
            return entry.st

    def listdir(self, gpath: str) -> list[tuple[str, int, int]]:
        """Merged (name, d_type, inode) entries of a directory, without . and .."""
        with self._op() as scope:
            node = self._walk(scope, gpath, "/", follow=False)
            entry = node.entry
            if entry is not None and not entry.is_dir:
                raise err(errno.ENOTDIR if entry.exists else errno.ENOENT)
            level = node.stack[-1] if entry is None else descend(scope, entry)
            return merged_entries(level)

    def readlink(self, gpath: str) -> str | None:
        """The target of the symlink at ``gpath`` (None if it is not a symlink)."""
        try:
            return self.readlink_at(gpath, "/")
        except OSError:
            return None

    def copy_up(self, gpath: str) -> str:
        """Ensure the visible entry at ``gpath`` lives in the upper layer; return its host path
        (for tests and tools; the syscall layer never acts on a host path)."""
        with self._op() as scope:
            node = self._walk(scope, gpath, "/", follow=False)
            if node.entry is not None and not node.entry.exists:
                raise err(errno.ENOENT)
            self._copy_up(scope, node)
            return os.path.join(self.upper, *_parts(node.gpath))

    def remove(self, gpath: str, is_dir: bool) -> None:
        self.remove_at(gpath, "/", is_dir)

    def mkdir(self, gpath: str, mode: int) -> None:
        self.mkdir_at(gpath, "/", mode)

    def rename(self, old: str, new: str) -> None:
        self.rename_at(old, "/", new, "/")

    def symlink(self, target: str, gpath: str) -> None:
        self.symlink_at(target, gpath, "/")
