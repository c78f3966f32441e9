"""Assemble a guest root from this machine's own dynamically linked binaries.

``DynRoot.add(host_path)`` copies a binary to the same path inside the root together with
what it needs to run: its interpreter and libraries as ``ldd`` reports them. Every
symlink on the way (Debian's /lib -> usr/lib, /lib64/ld-linux-x86-64.so.2 -> an absolute
path) is recreated as the same symlink inside the root, so the guest resolves them as
Linux would, inside its sandbox.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["DynRoot", "needed_files", "PY_SKIP_DIRS"]

_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")
#: Parts of the Python standard library a test does not need (big, or tests of Python).
PY_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip",
                          "lib2to3", "pydoc_data", "__pycache__", "config-3.11-x86_64-linux-gnu",
                          "distutils", "site-packages", "dist-packages"})


def needed_files(binary: Path) -> list[Path]:
    """The interpreter and shared libraries ``binary`` loads, as host paths (via ldd)."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if result.returncode != 0:
        return []                      # "not a dynamic executable"
    found = []
    for line in result.stdout.splitlines():
        match = _LDD_LINE.match(line)
        if match:
            found.append(Path(match.group(1)))
    return found


class DynRoot:
    """A guest root directory being filled with host files at their host paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, host: Path | str, with_libs: bool = True) -> DynRoot:
        """Copy ``host`` (and, if it is dynamically linked, its interpreter and libraries)."""
        host = Path(host)
        self.copy(host)
        if with_libs:
            for lib in needed_files(host):
                self.copy(lib)
        return self

    def copy(self, host: Path | str) -> Path:
        """Copy one host file to the same absolute path in the root, recreating each symlink
        met on the way (components and the file itself) as a symlink; returns the copy."""
        pending = [p for p in Path(host).parts[1:]]
        done = Path("/")
        hops = 0
        while pending:
            part = pending.pop(0)
            current = done / part
            inside = self.root / current.relative_to("/")
            if current.is_symlink():
                hops += 1
                if hops > 40:
                    raise OSError(f"too many symlinks copying {host}")
                target = os.readlink(current)
                if not inside.is_symlink():
                    inside.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(target, inside)
                if target.startswith("/"):
                    done = Path("/")
                pending = [p for p in Path(target).parts if p != "/"] + pending
                continue
            if part == "..":
                done = done.parent
                continue
            if current.is_dir():
                inside.mkdir(parents=True, exist_ok=True)
            elif not inside.exists():
                inside.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(current, inside)
            done = current
        return self.root / done.relative_to("/")

    def add_tree(self, host: Path | str, skip: frozenset[str] = frozenset()) -> DynRoot:
        """Copy a directory tree (files and symlinks as they are), leaving out directories
        named in ``skip``; the shared objects in it get their libraries too."""
        host = Path(host)
        dest = self.copy(host)
        for dirpath, dirnames, filenames in os.walk(host):
            dirnames[:] = [d for d in dirnames if d not in skip]
            rel = Path(dirpath).relative_to(host)
            (dest / rel).mkdir(parents=True, exist_ok=True)
            for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                src, dst = Path(dirpath) / name, dest / rel / name
                if dst.exists() or dst.is_symlink():
                    continue
                if src.is_symlink():
                    os.symlink(os.readlink(src), dst)
                    continue
                shutil.copy2(src, dst)
                if name.endswith(".so"):
                    for lib in needed_files(src):
                        self.copy(lib)
        return self

    def write(self, guest_path: str, data: bytes | str, mode: int = 0o644) -> Path:
        path = self.root / guest_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        path.chmod(mode)
        return path
