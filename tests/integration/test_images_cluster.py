"""Images end to end on a real cluster: pushed (or imported from OCI / docker save) through
the CLI into the controller's blob store, pulled by each node, run, and their bytes checked
inside the guest (busybox sha256sum against hashlib here); a pull broken half-way resumes;
`image rm` and GC free the blob; etcd holds metadata only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from itutil import ClusterHandle, assert_cli_error, load_json, running_cluster, wait_for

from tests.oci_build import Dir, File, Image, Whiteout, write_docker_save, write_oci_layout

BUSYBOX = Path("/bin/busybox")
MiB = 1 << 20

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")


GC_GRACE_S = 1.0


@pytest.fixture(scope="module")
def icluster() -> Iterator[ClusterHandle]:
    yield from running_cluster("vit-img-", {},
                               controller_flags=("--image-gc-grace", str(GC_GRACE_S)))


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


def run_on(cluster: ClusterHandle, image: str, node: str, *args: str) -> tuple[int, str]:
    res = cluster.cli("run", "--image", image, "--node-selector", f"viridian.io/node={node}",
                      *(["--", *args] if args else []), timeout=240)
    return res.code, res.out


def sha256_in_guest(cluster: ClusterHandle, image: str, node: str, path: str) -> str:
    code, out = run_on(cluster, image, node, "sha256sum", path)
    assert code == 0, out
    return out.split()[0]


def listed_images(cluster: ClusterHandle) -> list[dict[str, object]]:
    res = cluster.cli("image", "ls", "-o", "json")
    assert res.code == 0, str(res)
    data = load_json(res.out)
    assert isinstance(data, list)
    return data


def etcd_db_size(cluster: ClusterHandle) -> int:
    """etcd's own figure for its backend file (etcd_mvcc_db_total_size_in_bytes)."""
    etcd = cluster.cluster.etcd
    assert etcd is not None
    with urllib.request.urlopen(f"http://{etcd.host}:{etcd.metrics_port}/metrics",
                                timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("etcd_mvcc_db_total_size_in_bytes "):
                return int(float(line.split()[1]))
    raise AssertionError("etcd reported no db size")


def blob_file(cluster: ClusterHandle, digest: str) -> Path:
    return cluster.data_dir / "controller" / "blobs" / "sha256" / digest.split(":", 1)[1]


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
    listed = load_json(icluster.cli("image", "ls", "-o", "json").out)
    assert isinstance(listed, list)
    big = [i for i in listed if i["name"] == "big"]
    assert len(big) == 1 and big[0]["tag"] == "v1", big
    assert int(big[0]["size_bytes"]) > 256 * MiB
    for node in ("node-1", "node-2"):
        assert sha256_in_guest(icluster, "big:v1", node, "/data/blob") == want


def test_oci_image_with_a_whiteout_imported_and_run_on_both_nodes(icluster: ClusterHandle,
                                                                  tmp_path: Path) -> None:
    blob, extra = os.urandom(8 * MiB), os.urandom(MiB)
    layers = [
        [Dir("bin"), File("bin/busybox", BUSYBOX.read_bytes(), mode=0o755), Dir("etc"),
         File("etc/gone", b"lower"), File("etc/keep", b"kept"), Dir("data"),
         File("data/blob", blob)],
        [Whiteout("etc/gone"), File("data/extra", extra)],
    ]
    image = Image(layers, entrypoint=["/bin/busybox"], cmd=["sha256sum", "/data/blob"],
                  env=["PATH=/bin"], workdir="/data")
    layout = write_oci_layout(tmp_path / "layout", image)
    res = icluster.cli("image", "import", str(layout), "oci:v1", timeout=120)
    assert res.code == 0, str(res)
    docker = write_docker_save(tmp_path / "saved.tar", image)
    res = icluster.cli("image", "import", str(docker), "dock:v1", timeout=120)
    assert res.code == 0, str(res)
    digests = {(i["name"], i["tag"]): i["digest"] for i in listed_images(icluster)}
    # One root filesystem whatever form it came in.
    assert digests[("oci", "v1")] == digests[("dock", "v1")]

    want = hashlib.sha256(blob).hexdigest()
    for node in ("node-1", "node-2"):
        # No arguments: the image's Cmd runs.
        code, out = run_on(icluster, "oci:v1", node)
        assert code == 0 and out.split()[0] == want, out
        # The image's working directory is /data.
        assert sha256_in_guest(icluster, "dock:v1", node, "extra") == \
            hashlib.sha256(extra).hexdigest()
        assert run_on(icluster, "oci:v1", node, "test", "-e", "/etc/gone")[0] == 1
        assert run_on(icluster, "oci:v1", node, "test", "-e", "/etc/keep")[0] == 0


def test_rm_refused_in_use_then_gc_frees_the_blob(icluster: ClusterHandle,
                                                  tmp_path: Path) -> None:
    size_before = etcd_db_size(icluster)
    busybox_root(tmp_path / "root", 64 * MiB)
    res = icluster.cli("image", "push", "gcme", str(tmp_path / "root"),
                       "--entrypoint", "/bin/busybox", timeout=120)
    assert res.code == 0, str(res)
    # etcd holds metadata only: 64 MiB pushed, well under one more MiB in etcd.
    assert etcd_db_size(icluster) - size_before < MiB
    digest = next(i["digest"] for i in listed_images(icluster) if i["name"] == "gcme")
    assert isinstance(digest, str)
    path = blob_file(icluster, digest)
    assert path.stat().st_size > 64 * MiB

    res = icluster.cli("create", "it-gc-user", "--image", "gcme", "--", "sleep", "3600")
    assert res.code == 0, str(res)
    used = [i for i in listed_images(icluster) if i["name"] == "gcme"]
    assert used[0]["used_by"] == ["it-gc-user"], used
    assert_cli_error(icluster.cli("image", "rm", "gcme"), "FAILED_PRECONDITION", "it-gc-user")
    assert path.exists()

    res = icluster.cli("delete", "it-gc-user", "--force", "--wait")
    assert res.code == 0, str(res)
    res = icluster.cli("image", "rm", "gcme")
    assert res.code == 0, str(res)
    wait_for(lambda: not path.exists() or None, "the blob deleted by GC", timeout=30)
    assert not any(i["name"] == "gcme" for i in listed_images(icluster))


def test_a_pull_broken_half_way_resumes(icluster: ClusterHandle, tmp_path: Path) -> None:
    """The controller serving a 256 MiB pull is killed mid-stream; the node resumes from the
    bytes it has once a controller answers again, and the guest reads the right bytes."""
    want = busybox_root(tmp_path / "root", 256 * MiB)
    res = icluster.cli("image", "push", "resume", str(tmp_path / "root"),
                       "--entrypoint", "/bin/busybox", timeout=300)
    assert res.code == 0, str(res)
    partial = icluster.data_dir / "agents" / "node-1" / "images" / "partial"
    log = icluster.data_dir / "logs" / "node-1.log"
    log_start = log.stat().st_size
    res = icluster.cli("create", "it-resume", "--image", "resume",
                       "--node-selector", "viridian.io/node=node-1",
                       "--", "sha256sum", "/data/blob")
    assert res.code == 0, str(res)

    def started() -> int | None:
        sizes = [p.stat().st_size for p in partial.glob("*")] if partial.exists() else []
        return sizes[0] if sizes and sizes[0] >= MiB else None

    wait_for(started, "the pull under way", timeout=60, interval=0.002)
    controller = icluster.cluster.controller
    assert controller is not None
    controller.send_signal(signal.SIGSTOP)  # freeze the stream where it is
    stopped_at = max(p.stat().st_size for p in partial.glob("*"))
    icluster.kill_controller()
    assert stopped_at < 256 * MiB, "the pull ended before the controller was stopped"
    icluster.start_controller()

    def ended() -> dict[str, object] | None:
        res = icluster.cli("get", "it-resume", "-o", "json")
        data = json.loads(res.out) if res.code == 0 else {}
        status = data.get("status", {}) if isinstance(data, dict) else {}
        return data if status.get("phase") in ("PARTITION_PHASE_OFF",
                                               "PARTITION_PHASE_FAILED") else None

    final = wait_for(ended, "the partition to end", timeout=240)
    status = final["status"]
    assert isinstance(status, dict)
    assert status["phase"] == "PARTITION_PHASE_OFF" and status.get("exit_code", 0) == 0, final
    logs = icluster.cli("logs", "it-resume")
    assert logs.out.split()[0] == want, str(logs)
    with open(log, "rb") as f:
        f.seek(log_start)
        agent_log = f.read().decode(errors="replace")
    assert "resuming" in agent_log, agent_log[-2000:]
