"""Saved states and checkpoints kept on this node: one file per state, named by its sha256,
under RUN_DIR/states/PARTITION/. Files come from a save or checkpoint here, or are pulled
from another node through the controller (and verified) for a restore."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

CHUNK = 1 << 20


class StateError(Exception):
    pass


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
        p = self.root / name / f"{_hex(digest)}.state"
        return p if p.is_file() else None

    def receive(self, name: str, digest: str, chunks: Iterator[bytes]) -> Path:
        """Write a pulled state, verify its sha256, and keep it under its digest."""
        tmp = self.scratch(name, "pull")
        h = hashlib.sha256()
        with open(tmp, "wb") as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            tmp.unlink(missing_ok=True)
            raise StateError(f"pulled state has digest {actual}, expected {digest}")
        final = self.root / name / f"{_hex(digest)}.state"
        os.replace(tmp, final)
        return final

    async def receive_async(self, name: str, digest: str, chunks: AsyncIterator[bytes]) -> Path:
        """receive() for chunks arriving on the event loop."""
        tmp = self.scratch(name, "pull")
        h = hashlib.sha256()
        with open(tmp, "wb") as f:
            async for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            tmp.unlink(missing_ok=True)
            raise StateError(f"pulled state has digest {actual}, expected {digest}")
        final = self.root / name / f"{_hex(digest)}.state"
        os.replace(tmp, final)
        return final

    def read(self, name: str, digest: str) -> Iterator[bytes]:
        path = self.path(name, digest)
        if path is None:
            raise StateError(f"no state {digest[:19]} of {name!r} on this node")
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

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
