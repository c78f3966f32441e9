"""Partition start latency through the fork server: launch → first guest instruction.

The guest (tests/guests/worker_first.c, no libc) writes one console byte with its first
instructions, so "first console byte" = first guest instruction + one write syscall + the
ring write; it is measured by this process spinning on console.log. Phases, per launch,
all from the moment launch() is called (CLOCK_MONOTONIC, shared by all processes):

  launch returned  the fork server forked and wrote the pid file; launch() returned
  worker ready     the worker built its Machine and is about to call run() (`ready` file)
  first byte       the guest's first write reached console.log (≈ first instruction)
  exit collected   status.json seen by the handle

Baseline: a fresh interpreter importing the runtime (what a fork server saves).
Usage: python bench/runtime_start.py [-n 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node_agent.runtime.spec import PartitionSpec  # noqa: E402
from node_agent.runtime.unicorn_build import is_patched  # noqa: E402
from node_agent.runtime.workers import WorkerManager  # noqa: E402

PHASES = ("launch returned", "worker ready", "first byte", "exit collected")


def build_guest(root: Path) -> None:
    subprocess.run(["gcc", "-O1", "-static", "-nostdlib", "-fno-pie", "-no-pie", "-o",
                    str(root / "first"), str(ROOT / "tests/guests/worker_first.c")],
                   check=True)


def one(mgr: WorkerManager, root: Path, i: int) -> dict[str, float]:
    spec = PartitionSpec(name=f"b{i}", root=root, entrypoint="/first")
    t0 = time.monotonic()
    handle = mgr.launch(spec, epoch=1)
    t_launch = time.monotonic()
    deadline = t0 + 10.0
    while not handle.read_console(0)[0]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no console output from {spec.name}")
        time.sleep(0.0001)
    t_first = time.monotonic()
    status = handle.wait(10.0)
    t_exit = time.monotonic()
    if status is None or status.exit_code != 0:
        raise RuntimeError(f"{spec.name} ended badly: {status}")
    ready = json.loads((handle.dir / "ready").read_text())["mono"]
    mgr.forget(spec.name)
    ms = 1000.0
    return {"launch returned": (t_launch - t0) * ms, "worker ready": (ready - t0) * ms,
            "first byte": (t_first - t0) * ms, "exit collected": (t_exit - t0) * ms}


def fresh_interpreter_ms(runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "import node_agent.runtime.machine"],
                       check=True, cwd=ROOT)
        times.append((time.monotonic() - t0) * 1000.0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="viridian-bench-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        build_guest(root)
        mgr = WorkerManager(Path(tmp) / "run")
        t0 = time.monotonic()
        mgr.start_forkserver()
        server_ms = (time.monotonic() - t0) * 1000.0
        try:
            one(mgr, root, -1)  # warm-up
            samples = [one(mgr, root, i) for i in range(args.n)]
        finally:
            mgr.close()
    result: dict[str, object] = {"runs": args.n, "patched_unicorn": is_patched(),
                                 "forkserver_start_ms": round(server_ms, 1),
                                 "fresh_interpreter_import_ms": round(fresh_interpreter_ms(), 1)}
    print(f"{'phase (ms from launch())':<26}{'p50':>8}{'p90':>8}{'max':>8}")
    for phase in PHASES:
        values = sorted(s[phase] for s in samples)
        p50 = statistics.median(values)
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        result[phase] = {"p50": round(p50, 2), "p90": round(p90, 2),
                         "max": round(values[-1], 2)}
        print(f"{phase:<26}{p50:8.2f}{p90:8.2f}{values[-1]:8.2f}")
    print(f"fork server start {server_ms:.0f} ms; fresh interpreter importing the runtime "
          f"{result['fresh_interpreter_import_ms']} ms; patched unicorn: {is_patched()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
