"""Images end to end on a real cluster: pushed through the CLI into the controller's blob
store, pulled by each node, run, and their bytes checked inside the guest (busybox sha256sum
against hashlib here)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from itutil import ClusterHandle, load_json, running_cluster

BUSYBOX = Path("/bin/busybox")
MiB = 1 << 20

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")


@pytest.fixture(scope="module")
def icluster() -> Iterator[ClusterHandle]:
    yield from running_cluster("vit-img-", {})


def write_random(path: Path, size: int) -> str:
    """Write `size` random bytes to path; return their sha256 hex."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def busybox_root(root: Path, data_bytes: int) -> str:
    """A root filesystem with busybox and /data/blob of data_bytes; returns the blob's sha256."""
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    return write_random(root / "data" / "blob", data_bytes)


def sha256_in_guest(cluster: ClusterHandle, image: str, node: str, path: str) -> str:
    res = cluster.cli("run", "--image", image, "--node-selector", f"viridian.io/node={node}",
                      "--", "sha256sum", path, timeout=240)
    assert res.code == 0, str(res)
    return res.stdout.split()[0]


def test_a_busybox_image_with_data_runs(icluster: ClusterHandle, tmp_path: Path) -> None:
    """The reported case: 4.8 MiB (busybox and a 3 MB file) used to exceed etcd's read limit
    on every start."""
    want = busybox_root(tmp_path / "root", 3_000_000)
    res = icluster.cli("image", "push", "bb", str(tmp_path / "root"),
                       "--entrypoint", "/bin/busybox")
    assert res.code == 0, str(res)
    for node in ("node-1", "node-2"):
        assert sha256_in_guest(icluster, "bb", node, "/data/blob") == want


def test_256mib_directory_image_read_back_on_both_nodes(icluster: ClusterHandle,
                                                        tmp_path: Path) -> None:
    want = busybox_root(tmp_path / "root", 256 * MiB)
    res = icluster.cli("image", "push", "big:v1", str(tmp_path / "root"),
                       "--entrypoint", "/bin/busybox", timeout=300)
    assert res.code == 0, str(res)
    shutil.rmtree(tmp_path / "root")
    listed = load_json(icluster.cli("image", "ls", "-o", "json").stdout)
    assert isinstance(listed, list)
    big = [i for i in listed if i["name"] == "big"]
    assert len(big) == 1 and big[0]["tag"] == "v1", big
    assert int(big[0]["size_bytes"]) > 256 * MiB
    for node in ("node-1", "node-2"):
        assert sha256_in_guest(icluster, "big:v1", node, "/data/blob") == want
