"""The agent's side of an image pull: a tar image streamed over gRPC on loopback into the
image cache (node_agent/image_pull.py: sha256 as it arrives, written to the partial file),
then unpacked (node_agent/images.py), against plain `cp` of the same bytes.

The server is a gateway that reads the image file in 1 MiB chunks (tests/unit/agent/
image_fakes.py), in this process, so this measures the agent's work plus gRPC on loopback,
not a controller's blob store. Peak RSS growth is read from VmHWM after resetting it
(/proc/self/clear_refs), a small image having been pulled first.

Usage: python bench/agent_pull.py [--mib 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proto"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "agent"))

from image_fakes import BlobGateway, GatewayClient  # noqa: E402

from node_agent.image_pull import BlobPuller  # noqa: E402
from node_agent.images import Blob, ImageCache  # noqa: E402

MiB = 1 << 20


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def _image(work: Path, mib: int, name: str) -> tuple[Path, str]:
    data = work / f"{name}.data"
    with data.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MiB))
    tar_path = work / f"{name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(data, arcname="bin/app")
    data.unlink()
    digest = hashlib.sha256()
    with tar_path.open("rb") as f:
        while piece := f.read(4 * MiB):
            digest.update(piece)
    return tar_path, "sha256:" + digest.hexdigest()


async def _pull(work: Path, mib: int) -> dict[str, float]:
    small, small_digest = _image(work, 4, "small")
    big, big_digest = _image(work, mib, "big")
    gw = BlobGateway(MiB)
    gw.blobs = {small_digest: small, big_digest: big}
    await gw.start()
    client = GatewayClient(gw.address)
    try:
        puller = BlobPuller(client)
        cache = ImageCache(work / "cache", limit_bytes=4 * mib * MiB + 64 * MiB)

        async def run(path: Path, digest: str) -> tuple[float, float]:
            size = path.stat().st_size
            blob = Blob(digest, size, "tar", "/bin/app")
            partial = cache.partial_path(blob.key)
            t0 = time.perf_counter()
            await puller.pull(digest, size, partial, path.name)
            t1 = time.perf_counter()
            await asyncio.to_thread(cache.install_file, digest, "tar", "/bin/app", partial)
            t2 = time.perf_counter()
            partial.unlink()
            return t1 - t0, t2 - t0

        await run(small, small_digest)
        Path("/proc/self/clear_refs").write_text("5")
        base = _status("VmRSS")
        pull_s, total_s = await run(big, big_digest)
        growth = _status("VmHWM") - base
    finally:
        await client.close()
        await gw.stop()
    size = big.stat().st_size
    t0 = time.perf_counter()
    subprocess.run(["cp", str(big), str(work / "copy")], check=True)
    cp_s = time.perf_counter() - t0
    return {"mib": size / MiB, "pull_s": pull_s, "pull_and_unpack_s": total_s, "cp_s": cp_s,
            "pull_mib_s": size / MiB / pull_s, "pull_and_unpack_mib_s": size / MiB / total_s,
            "cp_mib_s": size / MiB / cp_s, "peak_rss_growth_mib": growth / MiB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="image size in MiB")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-pull-") as tmp:
        result = asyncio.run(_pull(Path(tmp), args.mib))
    print(f"{'image':<28}{result['mib']:>10.0f} MiB")
    print(f"{'pull (stream+sha256+write)':<28}{result['pull_mib_s']:>10.0f} MiB/s"
          f"  {result['pull_s']:.2f} s")
    print(f"{'pull + unpack':<28}{result['pull_and_unpack_mib_s']:>10.0f} MiB/s"
          f"  {result['pull_and_unpack_s']:.2f} s")
    print(f"{'cp of the same file':<28}{result['cp_mib_s']:>10.0f} MiB/s"
          f"  {result['cp_s']:.2f} s")
    print(f"{'peak RSS growth':<28}{result['peak_rss_growth_mib']:>10.1f} MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
