"""Screenshots of the web console's main pages for the docs (docs/screenshots/*.png).

Starts a real 2-node cluster (the processes `viridian up` runs) with the web console, creates
a few partitions, opens the pages in headless Chromium and saves a PNG of each. Needs gcc,
chromium, chromium-driver and selenium (the browser tests' tools).

    PYTHONPATH=$PWD:$PWD/proto python tools/web_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from browser import headless_chromium, log_in, missing, wait_until  # noqa: E402
from itutil import (  # noqa: E402
    GUESTS,
    ClusterHandle,
    compile_guest,
    running_cluster,
    wait_phase,
)
from viridian.v1 import controller_pb2 as cpb  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

from controller.etcd_server import free_port  # noqa: E402


def _cli(cluster: ClusterHandle, *args: str) -> None:
    res = cluster.cli(*args)
    if res.code != 0:
        raise SystemExit(f"viridian {' '.join(args)} failed:\n{res}")


def _populate(cluster: ClusterHandle) -> None:
    _cli(cluster, "create", "web", "--image", "sleep", "--vcpus", "2", "--memory", "1Gi",
         "--label", "app=web", "--", "3600")
    _cli(cluster, "create", "db", "--image", "sleep", "--vcpus", "2", "--memory", "2Gi",
         "--", "3600")
    _cli(cluster, "create", "cache", "--image", "sleep", "--memory", "512Mi", "--", "3600")
    _cli(cluster, "create", "batch", "--image", "hello", "--", "0", "done")
    for name in ("web", "db", "cache"):
        wait_phase(cluster.stub, name, pb.PARTITION_PHASE_RUNNING)
    wait_phase(cluster.stub, "batch", pb.PARTITION_PHASE_OFF)
    _cli(cluster, "checkpoint", "create", "web", "before-upgrade")
    _cli(cluster, "pause", "cache")
    wait_phase(cluster.stub, "cache", pb.PARTITION_PHASE_PAUSED)


def _shoot(driver: Any, url: str, ready: Any, what: str, out: Path) -> None:
    driver.get(url)
    wait_until(driver, ready, what)
    time.sleep(0.3)  # let the bars' widths and the last rows paint before the capture
    driver.save_screenshot(str(out))
    print(f"saved {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    why = missing()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vss-"))
    images = {name: compile_guest(GUESTS / src, work / name)
              for name, src in (("sleep", "it_sleep.c"), ("hello", "hello.c"))}
    web = f"127.0.0.1:{free_port()}"
    from selenium.webdriver.common.by import By

    try:
        for cluster in running_cluster("vss-", images, controller_flags=("--web-listen", web)):
            _populate(cluster)
            base = f"http://{web}/"
            driver = headless_chromium(work / "profile", 1280, 820)
            try:
                log_in(driver, base, cluster.cluster.admin_token())
                _shoot(driver, f"{base}#/nodes",
                       lambda d: len(d.find_elements(By.CSS_SELECTOR,
                                                     "#nodes tr[data-node]")) == 2,
                       "the nodes", args.out / "nodes.png")
                _shoot(driver, f"{base}#/partitions",
                       lambda d: len(d.find_elements(By.CSS_SELECTOR,
                                                     "#partitions tr[data-partition]")) == 4,
                       "the partitions", args.out / "partitions.png")
                _shoot(driver, f"{base}#/partitions/web",
                       lambda d: "sleeping" in d.find_element(By.ID, "console").text
                       and d.find_elements(By.CSS_SELECTOR, "#checkpoints td"),
                       "the partition page", args.out / "partition.png")
                node = cluster.stub.GetPartition(
                    cpb.GetPartitionRequest(name="web")).status.node
                _shoot(driver, f"{base}#/nodes/{node}",
                       lambda d: d.find_elements(By.CSS_SELECTOR,
                                                 "#node-partitions tr[data-partition]"),
                       "the node page", args.out / "node.png")
            finally:
                driver.quit()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
