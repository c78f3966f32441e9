"""Guest-visible modes and owners of upper-layer files, kept apart from the host file.

The agent runs as root, so a guest's ``chmod 4755`` or ``chown 1000`` must never reach the
host inode (a setuid file or a foreign owner on the host). The host file keeps harmless
bits (``perm & 0o777`` plus owner read/write); what the guest set lives here: a table keyed
by the upper inode (st_dev, st_ino) holding the guest's permission bits (12 bits, setuid and
sticky included), uid and gid. Times are the host file's own times (utimensat sets them).

The table is an append-only log in the upper layer's root, ``.wh..wh..meta``: a ``.wh.``
name, so the guest can neither see nor create it, and it travels with the layer wherever the
layer goes (a saved state's tar, a restart on the same directory). Each line is JSON: a
header ``{"v": 1, "self": ino}`` naming the log's own inode, then ``{"k": [dev, ino],
"m": perm, "u": uid, "g": gid, "p": hint}`` or ``{"k": [dev, ino], "d": 1}`` (dropped).
``hint`` is a path of the inode relative to the upper root. Inode numbers stay valid as long
as the log is the file it names as ``self``; a log found under another inode was copied
(unpacked from a state file), so its records are re-keyed by walking their hints, which
``compact`` rewrites exactly (by walking the layer) before every save. The log is compacted
when it holds more than twice as many lines as live records; what it adds to the layer is
charged to the quota.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .upper_quota import UpperQuota

__all__ = ["META_NAME", "Meta", "MetaTable", "host_perm"]

META_NAME = ".wh..wh..meta"
MAX_LOG = 64 << 20            # a larger log (a hostile state file) is ignored
_O_FILE = os.O_NOFOLLOW | os.O_CLOEXEC

_Key = tuple[int, int]


@dataclass(frozen=True)
class Meta:
    """What the guest sees of an upper inode's ownership and permissions."""

    perm: int      # 0o7777
    uid: int
    gid: int


def host_perm(perm: int, is_dir: bool) -> int:
    """The mode the host file may carry for a guest ``perm``: no setuid, setgid or sticky
    bit, and always owner read/write (and search on directories) so the runtime can use it."""
    return (perm & 0o777) | (0o700 if is_dir else 0o600)


def _key(st: os.stat_result) -> _Key:
    return st.st_dev, st.st_ino


def _u32(value: object) -> int | None:
    return value if isinstance(value, int) and 0 <= value < 1 << 32 else None


class MetaTable:
    """The guest metadata of upper inodes (see the module docstring); thread-safe."""

    def __init__(self, upper_fd: int, quota: UpperQuota | None = None) -> None:
        self.upper_fd = upper_fd
        self.quota = quota
        self._lock = threading.Lock()
        self._records: dict[_Key, tuple[Meta, str]] = {}
        self._lines = 0
        self._loaded = False

    # -- queries -----------------------------------------------------------------------
    def get(self, st: os.stat_result) -> Meta | None:
        with self._lock:
            self._load()
            found = self._records.get(_key(st))
            return None if found is None else found[0]

    def apply(self, st: os.stat_result) -> tuple[int, int, int]:
        """(mode, uid, gid) the guest sees for the upper inode whose lstat is ``st``."""
        meta = self.get(st)
        if meta is None:
            return st.st_mode, 0, 0
        return stat.S_IFMT(st.st_mode) | meta.perm, meta.uid, meta.gid

    def __len__(self) -> int:
        with self._lock:
            self._load()
            return len(self._records)

    # -- changes -----------------------------------------------------------------------
    def set(self, st: os.stat_result, meta: Meta, hint: str) -> None:
        """Record ``meta`` for the upper inode ``st`` (``hint``: a guest path of it)."""
        with self._lock:
            self._load()
            if self._records.get(_key(st), (None, ""))[0] == meta:
                return
            self._records[_key(st)] = (meta, hint.lstrip("/"))
            self._append({"k": list(_key(st)), "m": meta.perm, "u": meta.uid, "g": meta.gid,
                          "p": hint.lstrip("/")})

    def created(self, st: os.stat_result, perm: int, hint: str) -> None:
        """A new upper inode: record ``perm`` (owner 0) unless the host mode says the same,
        and forget whatever an earlier inode of the same number left."""
        if stat.S_ISLNK(st.st_mode) or perm & 0o7777 == st.st_mode & 0o7777:
            self.drop(st)
        else:
            self.set(st, Meta(perm & 0o7777, 0, 0), hint)

    def drop(self, st: os.stat_result) -> None:
        with self._lock:
            self._load()
            if self._records.pop(_key(st), None) is not None:
                self._append({"k": list(_key(st)), "d": 1})

    # -- the log ------------------------------------------------------------------------
    def _append(self, rec: dict[str, object]) -> None:
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        self._lines += 1
        if self._lines > 2 * len(self._records) + 64:
            self._rewrite(None)
            return
        fd = self._open_log(os.O_WRONLY | os.O_APPEND)
        if fd is None:
            self._rewrite(None)
            return
        try:
            if self.quota is not None:
                self.quota.reserve(len(line), force=True)
            os.write(fd, line)
        finally:
            os.close(fd)

    def _open_log(self, flags: int) -> int | None:
        try:
            fd = os.open(META_NAME, flags | _O_FILE, dir_fd=self.upper_fd)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(13, "metadata log is not a regular file")
        return fd

    def _rewrite(self, hints: dict[_Key, str] | None) -> None:
        """Write every live record to a fresh log (``hints``: exact paths by inode) and
        rename it over the old one."""
        tmp = META_NAME + ".new"
        try:
            os.unlink(tmp, dir_fd=self.upper_fd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_FILE, 0o600,
                     dir_fd=self.upper_fd)
        try:
            own = os.fstat(fd).st_ino
            lines = [json.dumps({"v": 1, "self": own})]
            for key, (meta, hint) in self._records.items():
                if hints is not None:
                    hint = hints.get(key, hint)
                    self._records[key] = (meta, hint)
                lines.append(json.dumps({"k": list(key), "m": meta.perm, "u": meta.uid,
                                         "g": meta.gid, "p": hint}, separators=(",", ":")))
            data = ("\n".join(lines) + "\n").encode()
            os.write(fd, data)
        finally:
            os.close(fd)
        old = os.lstat(META_NAME, dir_fd=self.upper_fd).st_size \
            if self._exists() else 0
        os.rename(tmp, META_NAME, src_dir_fd=self.upper_fd, dst_dir_fd=self.upper_fd)
        if self.quota is not None:
            grow = len(data) - old
            if grow >= 0:
                self.quota.reserve(grow, force=True)
            else:
                self.quota.refund(-grow)
        self._lines = len(self._records)

    def _exists(self) -> bool:
        try:
            os.lstat(META_NAME, dir_fd=self.upper_fd)
        except FileNotFoundError:
            return False
        return True

    def _load(self) -> None:
        """Read the log once (lazily: after a restore has unpacked the layer)."""
        if self._loaded:
            return
        self._loaded = True
        fd = self._open_log(os.O_RDONLY)
        if fd is None:
            return
        try:
            st = os.fstat(fd)
            if st.st_size > MAX_LOG:
                return
            raw = os.pread(fd, st.st_size, 0)
        finally:
            os.close(fd)
        own: int | None = None
        for text in raw.decode("utf-8", "replace").splitlines():
            try:
                rec = json.loads(text)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            self._lines += 1
            if "v" in rec:
                own = _u32(rec.get("self")) if own is None else own
                continue
            self._replay(rec)
        if own != st.st_ino:
            self._rekey()

    def _replay(self, rec: dict[str, object]) -> None:
        key = rec.get("k")
        if not (isinstance(key, list) and len(key) == 2
                and all(isinstance(v, int) for v in key)):
            return
        k: _Key = (int(key[0]), int(key[1]))
        if rec.get("d"):
            self._records.pop(k, None)
            return
        perm, uid, gid, hint = rec.get("m"), _u32(rec.get("u")), _u32(rec.get("g")), rec.get("p")
        if not isinstance(perm, int) or uid is None or gid is None or not isinstance(hint, str):
            return
        self._records[k] = (Meta(perm & 0o7777, uid, gid), hint)

    def _rekey(self) -> None:
        """The log was copied: find each record's inode again by its hint path."""
        old = self._records
        self._records = {}
        for meta, hint in old.values():
            st = lstat_rel(self.upper_fd, hint)
            if st is not None and not stat.S_ISLNK(st.st_mode):
                self._records[_key(st)] = (meta, hint)
        self._rewrite(None)

    def compact(self) -> None:
        """Rewrite the log with every record's hint made exact (before a save), dropping
        records whose inode is no longer in the layer."""
        with self._lock:
            self._load()
            hints = _paths_by_inode(self.upper_fd)
            self._records = {k: v for k, v in self._records.items() if k in hints}
            self._rewrite(hints)


def lstat_rel(root_fd: int, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` under ``root_fd``, every directory entered O_NOFOLLOW (None if not
    there or not reachable without following a link)."""
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    if not parts:
        return None
    fds: list[int] = []
    try:
        cur = root_fd
        for name in parts[:-1]:
            cur = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=cur)
            fds.append(cur)
        return os.lstat(parts[-1], dir_fd=cur)
    except OSError:
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _paths_by_inode(root_fd: int) -> dict[_Key, str]:
    """One relative path for every inode in the tree (walked by descriptors)."""
    out: dict[_Key, str] = {}
    pending: list[tuple[int, str]] = [
        (os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd), "")]
    try:
        while pending:
            fd, prefix = pending.pop()
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                for ent in entries:
                    if ent.name.startswith(".wh."):
                        continue
                    st = ent.stat(follow_symlinks=False)
                    out.setdefault(_key(st), prefix + ent.name)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append((os.open(ent.name, os.O_RDONLY | os.O_DIRECTORY
                                                | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd),
                                        prefix + ent.name + "/"))
            finally:
                os.close(fd)
    finally:
        for fd, _ in pending:
            os.close(fd)
    return out
