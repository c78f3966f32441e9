"""The sandboxed guest filesystem: a read-only lower layer under a writable upper layer.

Every guest path is resolved here, component by component, with ``..`` clamped at the guest
root and symlinks (absolute or relative) interpreted inside the guest's namespace; the host never
follows a link: each layer's ancestors must be real directories (``lstat``) and the final host
open uses ``O_NOFOLLOW``. Deleting a lower file leaves an aufs-style whiteout (``.wh.NAME``) in
the upper layer; a directory re-created over a whiteout is marked opaque (``.wh..wh..opq``).
All operations run under one lock, so guest threads cannot race a check against a use.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from pathlib import Path

__all__ = ["Sandbox", "VIRTUAL_DEVICES", "WH_PREFIX"]

WH_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_HOPS = 40
VIRTUAL_DEVICES = {"/dev/null": (1, 3), "/dev/zero": (1, 5), "/dev/random": (1, 8),
                   "/dev/urandom": (1, 9)}
VIRTUAL_DIRS = {"/dev", "/proc", "/proc/self"}


def _err(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path)


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class Sandbox:
    """Path resolution and overlay operations; paths in and out are guest paths (str)."""

    def __init__(self, lower: Path, upper: Path, exe: str) -> None:
        self.lower = str(lower)
        self.upper = str(upper)
        self.exe = exe
        self.lock = threading.RLock()

    # -- layer lookup ---------------------------------------------------------
    @staticmethod
    def _parts(gpath: str) -> list[str]:
        return [p for p in gpath.split("/") if p]

    def _in_layer(self, root: str, parts: list[str]) -> str | None:
        path = root
        for comp in parts[:-1]:
            path = os.path.join(path, comp)
            if not _is_dir(path):
                return None
        path = os.path.join(path, *parts[-1:]) if parts else path
        return path if os.path.lexists(path) else None

    def _hidden_in_lower(self, parts: list[str]) -> bool:
        path = self.upper
        for i, comp in enumerate(parts):
            if os.path.lexists(os.path.join(path, WH_PREFIX + comp)):
                return True
            path = os.path.join(path, comp)
            if i < len(parts) - 1 and os.path.exists(os.path.join(path, OPAQUE)) \
                    and _is_dir(path):
                return True
        return False

    def host_path(self, gpath: str) -> tuple[str, bool] | None:
        """(host path, is_upper) of the entry visible at ``gpath``, or None."""
        parts = self._parts(gpath)
        if any(p.startswith(WH_PREFIX) for p in parts):
            return None
        up = self._in_layer(self.upper, parts)
        if up is not None:
            return up, True
        if self._hidden_in_lower(parts):
            return None
        low = self._in_layer(self.lower, parts)
        return (low, False) if low is not None else None

    def is_virtual(self, gpath: str) -> bool:
        return gpath in VIRTUAL_DEVICES or gpath in VIRTUAL_DIRS or gpath == "/proc/self/exe"

    # -- resolution -------------------------------------------------------------
    def readlink(self, gpath: str) -> str | None:
        """The target of the symlink at ``gpath`` (None if it is not a symlink)."""
        if gpath == "/proc/self/exe":
            return self.exe
        if self.is_virtual(gpath):
            return None
        found = self.host_path(gpath)
        if found is None or not os.path.islink(found[0]):
            return None
        return os.readlink(found[0])

    def resolve(self, path: str, cwd: str, follow: bool = True) -> str:
        """Normalise ``path`` to an absolute, symlink-free guest path inside the sandbox."""
        if not path:
            raise _err(errno.ENOENT)
        if len(path) > 4095:
            raise _err(errno.ENAMETOOLONG)
        pending = self._parts(path if path.startswith("/") else cwd + "/" + path)
        pending.reverse()
        done: list[str] = []
        hops = 0
        with self.lock:
            while pending:
                comp = pending.pop()
                if comp == ".":
                    continue
                if comp == "..":
                    if done:
                        done.pop()
                    continue
                done.append(comp)
                last = not pending
                if last and not follow:
                    break
                gpath = "/" + "/".join(done)
                target = self.readlink(gpath)
                if target is None:
                    if not last and not self._is_dir_g(gpath):
                        raise _err(errno.ENOTDIR if self.exists(gpath) else errno.ENOENT)
                    continue
                hops += 1
                if hops > MAX_HOPS:
                    raise _err(errno.ELOOP)
                done.pop()
                if target.startswith("/"):
                    done = []
                pending.extend(reversed(self._parts(target)))
        return "/" + "/".join(done)

    def exists(self, gpath: str) -> bool:
        return self.is_virtual(gpath) or gpath == "/" or self.host_path(gpath) is not None

    def _is_dir_g(self, gpath: str) -> bool:
        if gpath == "/" or gpath in VIRTUAL_DIRS:
            return True
        found = self.host_path(gpath)
        return found is not None and _is_dir(found[0])

    def is_dir(self, gpath: str) -> bool:
        with self.lock:
            return self._is_dir_g(gpath)

    def lstat(self, gpath: str) -> os.stat_result:
        """Host lstat of the visible entry (virtual entries are handled by the caller)."""
        if gpath == "/":
            up = os.lstat(self.upper)
            return up if os.listdir(self.upper) else os.lstat(self.lower)
        found = self.host_path(gpath)
        if found is None:
            raise _err(errno.ENOENT, gpath)
        return os.lstat(found[0])

    # -- reading directories ------------------------------------------------------
    def listdir(self, gpath: str) -> list[tuple[str, int, int]]:
        """Merged (name, d_type, inode) entries of a directory, without . and .."""
        parts = self._parts(gpath)
        names: dict[str, tuple[int, int]] = {}
        with self.lock:
            layers: list[tuple[str, bool]] = []
            up = self.upper if not parts else self._in_layer(self.upper, parts)
            if up is not None and _is_dir(up):
                layers.append((up, True))
            opaque = up is not None and os.path.exists(os.path.join(up, OPAQUE))
            if not opaque and not self._hidden_in_lower(parts):
                low = self.lower if not parts else self._in_layer(self.lower, parts)
                if low is not None and _is_dir(low):
                    layers.append((low, False))
            whiteouts: set[str] = set()
            for root, is_upper in layers:
                with os.scandir(root) as it:
                    for ent in it:
                        if ent.name.startswith(WH_PREFIX):
                            if is_upper:
                                whiteouts.add(ent.name[len(WH_PREFIX):])
                            continue
                        if ent.name in names or (not is_upper and ent.name in whiteouts):
                            continue
                        st = ent.stat(follow_symlinks=False)
                        names[ent.name] = (_dtype(st.st_mode), st.st_ino)
            for vpath in list(VIRTUAL_DEVICES) + sorted(VIRTUAL_DIRS) + ["/proc/self/exe"]:
                head, _, name = vpath.rpartition("/")
                if (head or "/") == gpath and name not in names:
                    names[name] = (2 if vpath in VIRTUAL_DEVICES else 4, 1)
        return [(name, dt, ino) for name, (dt, ino) in names.items()]

    # -- writing -------------------------------------------------------------------
    def _ensure_upper_dir(self, parts: list[str]) -> str:
        """Make sure the upper layer has directory ``parts`` (copying modes); return it."""
        path = self.upper
        for i, comp in enumerate(parts):
            path = os.path.join(path, comp)
            if not os.path.lexists(path):
                low = self._in_layer(self.lower, parts[:i + 1])
                mode = os.lstat(low).st_mode & 0o7777 if low and _is_dir(low) else 0o755
                os.mkdir(path, mode | 0o700)
            elif not _is_dir(path):
                raise _err(errno.ENOTDIR)
        return path

    def prepare_create(self, gpath: str) -> str:
        """Host path in the upper layer where ``gpath`` can be created (parents copied up)."""
        parts = self._parts(gpath)
        if not parts or any(p.startswith(WH_PREFIX) for p in parts):
            raise _err(errno.EACCES, gpath)
        parent = self._ensure_upper_dir(parts[:-1])
        wh = os.path.join(parent, WH_PREFIX + parts[-1])
        if os.path.lexists(wh):
            os.unlink(wh)
        return os.path.join(parent, parts[-1])

    def copy_up(self, gpath: str) -> str:
        """Ensure the visible entry at ``gpath`` lives in the upper layer; return its host path."""
        found = self.host_path(gpath)
        if found is None:
            raise _err(errno.ENOENT, gpath)
        src, is_upper = found
        if is_upper:
            return src
        dst = self.prepare_create(gpath)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif _is_dir(src):
            os.mkdir(dst, os.lstat(src).st_mode & 0o7777 | 0o700)
        else:
            shutil.copyfile(src, dst, follow_symlinks=False)
            os.chmod(dst, os.lstat(src).st_mode & 0o7777 | 0o600)
        return dst

    def remove(self, gpath: str, is_dir: bool) -> None:
        """unlink/rmdir ``gpath`` in the merged view."""
        with self.lock:
            if self.is_virtual(gpath) or gpath == "/":
                raise _err(errno.EBUSY if is_dir else errno.EACCES, gpath)
            found = self.host_path(gpath)
            if found is None:
                raise _err(errno.ENOENT, gpath)
            host, is_upper = found
            if is_dir != _is_dir(host):
                raise _err(errno.ENOTDIR if is_dir else errno.EISDIR, gpath)
            if is_dir and self.listdir(gpath):
                raise _err(errno.ENOTEMPTY, gpath)
            parts = self._parts(gpath)
            if is_upper:
                if is_dir:
                    shutil.rmtree(host)
                else:
                    os.unlink(host)
            below = self._in_layer(self.lower, parts)
            if below is not None and not self._hidden_in_lower(parts):
                parent = self._ensure_upper_dir(parts[:-1])
                with open(os.path.join(parent, WH_PREFIX + parts[-1]), "w"):
                    pass

    def mkdir(self, gpath: str, mode: int) -> None:
        with self.lock:
            if self.exists(gpath):
                raise _err(errno.EEXIST, gpath)
            parts = self._parts(gpath)
            had_whiteout = os.path.lexists(
                os.path.join(self.upper, *parts[:-1], WH_PREFIX + parts[-1]))
            dst = self.prepare_create(gpath)
            os.mkdir(dst, (mode & 0o7777) | 0o700)
            if had_whiteout:
                with open(os.path.join(dst, OPAQUE), "w"):
                    pass

    def rename(self, old: str, new: str) -> None:
        with self.lock:
            if self.is_virtual(old) or self.is_virtual(new) or "/" in (old, new):
                raise _err(errno.EBUSY)
            if (new + "/").startswith(old + "/") and new != old:
                raise _err(errno.EINVAL)
            found = self.host_path(old)
            if found is None:
                raise _err(errno.ENOENT, old)
            if _is_dir(found[0]) and not found[1]:
                self._copy_tree_up(old)
            src = self.copy_up(old)
            target = self.host_path(new)
            if target is not None and _is_dir(target[0]):
                if not _is_dir(src):
                    raise _err(errno.EISDIR, new)
                if self.listdir(new):
                    raise _err(errno.ENOTEMPTY, new)
                self.remove(new, True)
            dst = self.prepare_create(new)
            os.rename(src, dst)
            parts = self._parts(old)
            below = self._in_layer(self.lower, parts)
            if below is not None and not self._hidden_in_lower(parts):
                parent = self._ensure_upper_dir(parts[:-1])
                with open(os.path.join(parent, WH_PREFIX + parts[-1]), "w"):
                    pass

    def _copy_tree_up(self, gpath: str) -> None:
        self.copy_up(gpath)
        for name, dtype, _ in self.listdir(gpath):
            child = gpath.rstrip("/") + "/" + name
            if dtype == 4:
                self._copy_tree_up(child)
            else:
                self.copy_up(child)

    def symlink(self, target: str, gpath: str) -> None:
        with self.lock:
            if self.exists(gpath):
                raise _err(errno.EEXIST, gpath)
            os.symlink(target, self.prepare_create(gpath))


def _dtype(mode: int) -> int:
    fmt = stat.S_IFMT(mode)
    return {stat.S_IFDIR: 4, stat.S_IFREG: 8, stat.S_IFLNK: 10, stat.S_IFCHR: 2,
            stat.S_IFIFO: 1, stat.S_IFSOCK: 12, stat.S_IFBLK: 6}.get(fmt, 0)
