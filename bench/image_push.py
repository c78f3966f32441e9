"""Image push and pull throughput through one controller, and the controller's memory.

Starts a real etcd and a controller process (`viridian controller --insecure`, local blob
store under a temporary data dir), builds a tar image of N MiB (a static ELF entrypoint and a
data file) on disk, then:

  cp      copies the file (and fsyncs it): the machine's baseline for the same bytes
  push    PushImage from the file in 1 MiB chunks → the blob filed and recorded
  pull    PullImage of the whole blob, hashed as it arrives (as an agent does)

and reports MiB/s for each and the controller's RSS before, its peak during push and pull
(sampled every 20 ms from /proc), and after. --tune picks controller/malloc.py's glibc
settings: default (arena count capped), off, or mmap (also a 256 KiB mmap threshold).

Usage: python bench/image_push.py [--sizes 256,1024] [--tune default,off,mmap] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proto"))

from viridian.v1 import agent_pb2 as apb  # noqa: E402
from viridian.v1 import agent_pb2_grpc, controller_pb2_grpc  # noqa: E402
from viridian.v1 import controller_pb2 as cpb  # noqa: E402

from controller.etcd_server import EtcdProcess  # noqa: E402

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    return 0


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_of(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = rss_of(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def build_image(path: Path, elf: Path, mib: int) -> None:
    block = os.urandom(16 * MiB)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(elf, "bin/app")
        info = tarfile.TarInfo("data/blob")
        info.size, info.mode = mib * MiB - 64 * 1024, 0o644

        class Reader:
            left = info.size

            def read(self, n: int = -1) -> bytes:
                n = min(self.left, len(block) if n < 0 else n, len(block))
                self.left -= n
                return block[:n]

        tar.addfile(info, Reader())  # type: ignore[arg-type, unused-ignore]


def chunks(path: Path, header: cpb.ImageHeader) -> Iterator[cpb.PushImageRequest]:
    yield cpb.PushImageRequest(header=header)
    with path.open("rb") as f:
        while data := f.read(MiB):
            yield cpb.PushImageRequest(chunk=data)


def measure(mib: int, tune: str, work: Path, elf: Path, endpoint: str
            ) -> dict[str, float | str]:
    image = work / f"image-{mib}.tar"
    build_image(image, elf, mib)
    size = image.stat().st_size
    t = time.perf_counter()
    shutil.copyfile(image, work / "copy.tar")
    with (work / "copy.tar").open("rb+") as f:
        os.fsync(f.fileno())
    cp_s = time.perf_counter() - t
    (work / "copy.tar").unlink()

    port = free_port()
    data_dir = work / f"ctl-{mib}-{tune}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}", "VIRIDIAN_LOG": "WARNING",
           "VIRIDIAN_MALLOC_TUNE": {"default": "1"}.get(tune, tune)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "controller", "--listen", f"127.0.0.1:{port}",
         "--etcd", endpoint, "--insecure", "--data-dir", str(data_dir),
         "--prefix", f"/bench-{time.time_ns()}"], env=env, stderr=subprocess.DEVNULL)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        agent = grpc.insecure_channel(f"127.0.0.1:{port + 1}",
                                      options=[("grpc.max_receive_message_length", 8 * MiB)])
        stub = controller_pb2_grpc.ControllerStub(channel)
        gateway = agent_pb2_grpc.AgentGatewayStub(agent)
        stub.ListImages(cpb.ListImagesRequest(), timeout=30)  # warm, serving
        before = rss_of(proc.pid)
        header = cpb.ImageHeader(name="bench", format="tar", entrypoint="/bin/app",
                                 size_bytes=size)
        with PeakRss(proc.pid) as push_peak:
            t = time.perf_counter()
            pushed = stub.PushImage(chunks(image, header), timeout=3600)
            push_s = time.perf_counter() - t
        after_push = rss_of(proc.pid)
        digest = hashlib.sha256()
        with PeakRss(proc.pid) as pull_peak:
            t = time.perf_counter()
            for c in gateway.PullImage(apb.PullImageRequest(digest=pushed.digest)):
                digest.update(c.data)
            pull_s = time.perf_counter() - t
        assert "sha256:" + digest.hexdigest() == pushed.digest
        after = rss_of(proc.pid)
        channel.close()
        agent.close()
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)
        image.unlink()
    return {"mib": mib, "tuned": tune, "cp_mibs": size / MiB / cp_s,
            "push_mibs": size / MiB / push_s, "pull_mibs": size / MiB / pull_s,
            "rss_before_mib": before / MiB, "rss_push_peak_mib": push_peak.peak / MiB,
            "rss_after_push_mib": after_push / MiB, "rss_pull_peak_mib": pull_peak.peak / MiB,
            "rss_after_mib": after / MiB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024", help="image sizes in MiB")
    parser.add_argument("--tune", default="default",
                        help="malloc settings to compare: default, off, mmap")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "bench" / "results" / "image_push.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="viridian-bench-images-") as tmp:
        work = Path(tmp)
        elf = work / "hello"
        subprocess.run(["gcc", "-static", "-O1", "-o", str(elf),
                        str(ROOT / "tests" / "guests" / "hello.c")], check=True)
        etcd = EtcdProcess(work / "etcd")
        etcd.start()
        try:
            for mib in sizes:
                for tune in args.tune.split(","):
                    rows.append(measure(mib, tune, work, elf, etcd.endpoint))
        finally:
            etcd.stop()
    print(f"{'MiB':>6} {'malloc':>7} {'cp MiB/s':>9} {'push MiB/s':>10} {'pull MiB/s':>10} "
          f"{'RSS before':>10} {'push peak':>9} {'after push':>10} {'pull peak':>9} "
          f"{'after':>6}")
    for r in rows:
        print(f"{r['mib']:>6} {r['tuned']:>7} {r['cp_mibs']:>9.0f} {r['push_mibs']:>10.0f} "
              f"{r['pull_mibs']:>10.0f} {r['rss_before_mib']:>10.0f} "
              f"{r['rss_push_peak_mib']:>9.0f} {r['rss_after_push_mib']:>10.0f} "
              f"{r['rss_pull_peak_mib']:>9.0f} {r['rss_after_mib']:>6.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": "2 cores", "rows": rows}, indent=2))
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
