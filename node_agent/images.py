"""The node's image cache: content pulled by digest through the controller, verified by
sha256, unpacked into a read-only root the partitions' filesystems are layered on."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import threading
from pathlib import Path, PurePosixPath


class ImagePullError(Exception):
    pass


class ImageCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _dir(self, digest: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or len(hexdigest) != 64 or not all(
            c in "0123456789abcdef" for c in hexdigest
        ):
            raise ImagePullError(f"invalid image digest {digest!r}")
        return self.root / hexdigest

    def root_for(self, digest: str, entrypoint: str) -> Path | None:
        """The unpacked root if present and holding the entrypoint, else None."""
        root = self._dir(digest) / "root"
        rel = PurePosixPath(entrypoint).relative_to("/")
        return root if (root / rel).is_file() else None

    def install(self, digest: str, fmt: str, entrypoint: str, content: bytes) -> Path:
        """Verify content against digest and unpack it; returns the root directory."""
        actual = "sha256:" + hashlib.sha256(content).hexdigest()
        if actual != digest:
            raise ImagePullError(f"image content has digest {actual}, expected {digest}")
        base = self._dir(digest)
        with self._lock:
            tmp = base.with_name(base.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            root = tmp / "root"
            root.mkdir(parents=True)
            rel = PurePosixPath(entrypoint).relative_to("/")
            if fmt == "tar":
                with tarfile.open(fileobj=io.BytesIO(content), mode="r:*") as tar:
                    tar.extractall(root, filter="data")
            else:
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                target.chmod(0o555)
            if not (root / rel).is_file():
                raise ImagePullError(f"entrypoint {entrypoint} missing from image {digest}")
            shutil.rmtree(base, ignore_errors=True)
            tmp.rename(base)
        return base / "root"
