"""The node's image cache: content pulled by digest through the controller, verified by
sha256, unpacked into a read-only root the partitions' filesystems are layered on.

Tar images are unpacked by the strict unpacker (node_agent.runtime.archive), the same rules
the controller applied at push; nothing on the host is followed, and errors name guest paths
and members only."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
from pathlib import Path

from node_agent.runtime.archive import (
    IMAGE_LIMITS,
    ArchiveError,
    is_regular_file,
    open_root,
    place_file,
    unpack,
)


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
        """The unpacked root if present and holding the entrypoint (symlinks followed inside
        the root, as the guest sees them), else None."""
        root = self._dir(digest) / "root"
        try:
            fd = open_root(root)
        except OSError:
            return None
        try:
            return root if is_regular_file(fd, entrypoint) else None
        finally:
            os.close(fd)

    def install(self, digest: str, fmt: str, entrypoint: str, content: bytes) -> Path:
        """Verify content against digest and unpack it; returns the root directory. On any
        failure nothing of this install is left behind."""
        actual = "sha256:" + hashlib.sha256(content).hexdigest()
        if actual != digest:
            raise ImagePullError(f"image content has digest {actual}, expected {digest}")
        base = self._dir(digest)
        short = digest[:19]
        with self._lock:
            tmp = base.with_name(base.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                (tmp / "root").mkdir(parents=True)
                fd = open_root(tmp / "root")
                try:
                    if fmt == "tar":
                        unpack(io.BytesIO(content), fd, IMAGE_LIMITS)
                    else:
                        place_file(fd, entrypoint, content, 0o555)
                    if not is_regular_file(fd, entrypoint):
                        raise ImagePullError(
                            f"entrypoint {entrypoint!r} missing from image {short}")
                finally:
                    os.close(fd)
                shutil.rmtree(base, ignore_errors=True)
                tmp.rename(base)
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
