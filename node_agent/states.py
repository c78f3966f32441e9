"""Saved states and checkpoints kept on this node: one file per state, named by its sha256,
under RUN_DIR/states/PARTITION/. Files come from a save or checkpoint here, or are pulled
from another node (directly or through the controller, verified either way) for a
restore."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class StateError(Exception):
    pass


class StateOffsetError(StateError):
    """A resume from past the end of the file."""


class StateReceiver:
    """A state file arriving in order, possibly over several streams (a resume continues at
    `offset`): hashed as it is written, kept under its digest only if the sha256 matches.
    The bytes come from another node and are not trusted: never more than `size`."""

    def __init__(self, tmp: Path, final: Path, digest: str, size: int) -> None:
        self.tmp = tmp
        self.final = final
        self.digest = digest
        self.size = size
        self.offset = 0
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = open(tmp, "wb")

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise StateError("the state receiver is closed")
        if self.size and self.offset + len(chunk) > self.size:
            raise StateError(f"the sender sent more than the state's {self.size} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)
        self.offset += len(chunk)

    def finish(self) -> Path:
        """Verify and keep the file; StateError (and nothing kept) if it is not the one."""
        self.close()
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            self.tmp.unlink(missing_ok=True)
            raise StateError(f"pulled state has digest {actual}, expected {self.digest}")
        os.replace(self.tmp, self.final)
        return self.final

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _hex(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef"
                                                            for c in hexdigest):
        raise StateError(f"invalid state digest {digest!r}")
    return hexdigest


def _name(name: str) -> str:
    """A partition name as a directory name (names arrive in requests and tickets)."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise StateError(f"invalid partition name {name[:64]!r}")
    return name


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def scratch(self, name: str, what: str) -> Path:
        """A path to write a new state file to before it is adopted."""
        return self.dir(name) / f".{what}.partial"

    def adopt(self, name: str, written: Path) -> tuple[str, int, Path]:
        """Name a freshly written state file by its digest; returns (digest, size, path)."""
        digest = sha256_file(written)
        final = self.dir(name) / f"{_hex(digest)}.state"
        size = written.stat().st_size
        os.replace(written, final)
        return digest, size, final

    def path(self, name: str, digest: str) -> Path | None:
        p = self.root / _name(name) / f"{_hex(digest)}.state"
        return p if p.is_file() else None

    def receiver(self, name: str, digest: str, size: int) -> StateReceiver:
        """Somewhere to write a state pulled from another node, verified as it arrives."""
        final = self.root / _name(name) / f"{_hex(digest)}.state"
        return StateReceiver(self.scratch(name, "pull"), final, digest, size)

    def open(self, name: str, digest: str, offset: int = 0) -> tuple[BinaryIO, int]:
        """A state file opened for reading at `offset`, and its size."""
        path = self.path(name, digest)
        if path is None:
            raise StateError(f"no state {digest[:19]} of {name!r} on this node")
        f = open(path, "rb")
        size = os.fstat(f.fileno()).st_size
        if offset > size:
            f.close()
            raise StateOffsetError(f"offset {offset} is past the end of the state ({size} "
                                   "bytes)")
        f.seek(offset)
        return f, size

    # checkpoint names -> digests, so a checkpoint can be deleted by name
    def _index(self, name: str) -> Path:
        return self.dir(name) / "checkpoints.json"

    def remember(self, name: str, checkpoint: str, digest: str) -> None:
        index = self._load(name)
        index[checkpoint] = digest
        self._index(name).write_text(json.dumps(index))

    def checkpoints(self, name: str) -> dict[str, str]:
        """Checkpoint names -> digests."""
        return self._load(name)

    def _load(self, name: str) -> dict[str, str]:
        try:
            data = json.loads(self._index(name).read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError):
            return {}

    def drop_checkpoint(self, name: str, checkpoint: str) -> None:
        index = self._load(name)
        digest = index.pop(checkpoint, None)
        self._index(name).write_text(json.dumps(index))
        if digest and digest not in index.values():
            path = self.path(name, digest)
            if path is not None:
                path.unlink(missing_ok=True)

    def purge(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)
