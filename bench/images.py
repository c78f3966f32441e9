"""Image push and pull throughput, and the first start of a fresh image, on the embedded
cluster.

    python bench/images.py [--gib 1] [--start-mib 256] [--json PATH]

Starts controller.embedded.Cluster (etcd, controller, one agent: real processes, insecure so
the pull can be driven directly) on a tmp data dir and measures, on the same bytes:

    cp              plain `cp` of the random data file to another file on the same disk,
                    with fsync (the floor: what the disk and page cache give)
    push            `viridian image push NAME DIR` of a directory holding that file
                    (tar to a temporary file, stream, digest, check, commit to the blob store)
    pull            AgentGateway.PullImage of the whole blob by a client that hashes it
                    as it arrives (what an agent's download does, without unpacking)
    first start     `viridian run` of a fresh --start-mib image on a node that never saw it
                    (pull + verify + unpack + start + `true`), against a second run of the
                    same image (warm cache)

and the controller's VmRSS before the push and its VmHWM after the push and the pull.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from viridian.v1 import agent_pb2 as apb  # noqa: E402
from viridian.v1 import agent_pb2_grpc as agrpc  # noqa: E402
from viridian.v1 import controller_pb2 as cpb  # noqa: E402
from viridian.v1 import controller_pb2_grpc as cgrpc  # noqa: E402

from controller.embedded import Cluster, open_channel  # noqa: E402
from controller.etcd_server import free_port  # noqa: E402

MiB = 1 << 20
BUSYBOX = Path("/bin/busybox")


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            out.write(block)
            left -= len(block)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cli(address: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}"}
    res = subprocess.run([sys.executable, "-m", "controller.cli", "--controller", address,
                          "--insecure", *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"viridian {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_root(root: Path, size: int) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    write_random(root / "data" / "blob", size)


def copy_with_fsync(src: Path, dst: Path) -> None:
    subprocess.run(["cp", str(src), str(dst)], check=True)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pull(agent_address: str, digest: str) -> int:
    with grpc.insecure_channel(agent_address) as channel:
        stub = agrpc.AgentGatewayStub(channel)
        hasher = hashlib.sha256()
        total = 0
        for chunk in stub.PullImage(apb.PullImageRequest(digest=digest), timeout=1800):
            hasher.update(chunk.data)
            total += len(chunk.data)
    if "sha256:" + hasher.hexdigest() != digest:
        raise SystemExit("pulled bytes do not match the digest")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the big image")
    parser.add_argument("--start-mib", type=int, default=256, help="size for the first start")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "images.json")
    args = parser.parse_args()
    size = int(args.gib * 1024) * MiB
    work = Path(tempfile.mkdtemp(prefix="vbench-img-", dir="/var/tmp"))
    data = Path(tempfile.mkdtemp(prefix="vb-img-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    cluster = Cluster(data, 1, address, insecure=True, agent_listen=f"127.0.0.1:{free_port()}")
    rows: list[tuple[str, str, str]] = []
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                          "platform": platform.platform()},
                              "image_bytes": size}
    try:
        make_root(work / "big", size)
        blob = work / "big" / "data" / "blob"
        cp_s = timed(lambda: copy_with_fsync(blob, work / "copy"))
        (work / "copy").unlink()
        cluster.start()
        assert cluster.controller is not None
        ctl = cluster.controller.pid
        rss0 = status_kib(ctl, "VmRSS")
        push_s = timed(lambda: cli(address, "image", "push", "big", str(work / "big"),
                                   "--entrypoint", "/bin/busybox"))
        hwm_push = status_kib(ctl, "VmHWM")
        channel = open_channel(address, None)
        images = cgrpc.ControllerStub(channel).ListImages(cpb.ListImagesRequest(), timeout=30)
        channel.close()
        image = next(i for i in images.images if i.name == "big")
        t0 = time.perf_counter()
        pulled = pull(cluster.agent_address, image.digest)
        pull_s = time.perf_counter() - t0
        hwm_pull = status_kib(ctl, "VmHWM")
        shutil.rmtree(work / "big")

        make_root(work / "fresh", args.start_mib * MiB)
        cli(address, "image", "push", "fresh", str(work / "fresh"),
            "--entrypoint", "/bin/busybox")
        first_s = timed(lambda: cli(address, "run", "--image", "fresh", "--", "true"))
        warm_s = timed(lambda: cli(address, "run", "--image", "fresh", "--", "true"))

        mib = size / MiB
        result.update(
            cp_mib_s=mib / cp_s, push_mib_s=mib / push_s, pull_mib_s=pulled / MiB / pull_s,
            push_vs_cp=cp_s / push_s, pull_vs_cp=cp_s / pull_s,
            first_start_s=first_s, warm_start_s=warm_s, start_image_mib=args.start_mib,
            controller_rss_before_mib=rss0 / 1024, controller_hwm_after_push_mib=hwm_push / 1024,
            controller_hwm_after_pull_mib=hwm_pull / 1024,
        )
        rows += [
            (f"cp of {mib:.0f} MiB (fsync)", f"{mib / cp_s:.0f} MiB/s", "1.00x"),
            ("push through the CLI", f"{mib / push_s:.0f} MiB/s", f"{cp_s / push_s:.2f}x of cp"),
            ("pull (PullImage, hashed)", f"{pulled / MiB / pull_s:.0f} MiB/s",
             f"{cp_s / pull_s:.2f}x of cp"),
            (f"first start, fresh {args.start_mib} MiB image", f"{first_s:.2f} s", ""),
            ("second start, same image (cached)", f"{warm_s:.2f} s", ""),
            ("controller RSS before push", f"{rss0 / 1024:.0f} MiB", ""),
            ("controller peak RSS after push", f"{hwm_push / 1024:.0f} MiB", ""),
            ("controller peak RSS after pull", f"{hwm_pull / 1024:.0f} MiB", ""),
        ]
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    table = Table(title=f"images ({os.cpu_count()} cores)")
    for col in ("what", "figure", "ratio"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
