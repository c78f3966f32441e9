"""Process benchmarks (issue 11): fork+exec+wait rate, a shell pipeline, pipe throughput.

One command, one table; each figure is a ratio to qemu-user measured in the same run (qemu
runs the same static busybox, each program in its own host process, as Linux does):

  spawn     busybox sh: `i=0; while [ $i -lt N ]; do $BIN/true; ...; done`, i.e. N
            fork+execve+wait4 of busybox's true (under qemu, $BIN holds wrappers that exec
            qemu-x86_64 on the applet: each program is its own emulated process).
  pipeline  `seq 100000 | sort -n | tail -1` wall time (three processes, two pipes).
  pipe      `dd if=/dev/zero bs=64k count=M | dd of=/dev/null bs=64k` (M*64 KiB through a
            pipe between two processes), MiB/s.

The runtime runs in-process (Machine.run, the partition's 2 vCPUs); times are wall clock
around the whole run, start-up included for both. Outputs are compared (the pipeline's
result must be 100000 on both sides). "speed vs qemu" is viridian's speed over qemu-user's
(above 1: viridian is faster).

Usage: python bench/processes.py [--spawns N] [--megabytes M] [--reps R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console as RichConsole  # noqa: E402
from rich.table import Table  # noqa: E402

from node_agent.runtime.console import BufferConsole  # noqa: E402
from node_agent.runtime.machine import Machine  # noqa: E402
from node_agent.runtime.spec import PartitionSpec  # noqa: E402

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "true", "seq", "sort", "tail", "dd", "cat")


def _root(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    return root


def _here(root: Path, script: str) -> tuple[float, bytes, int | None]:
    spec = PartitionSpec(name="bench", root=root, entrypoint="/bin/sh", args=("-c", script),
                         env=(("PATH", "/bin"), ("BIN", "/bin")), vcpus=2,
                         memory_bytes=256 << 20)
    console = BufferConsole(b"")
    machine = Machine(spec, console)
    t0 = time.perf_counter()
    status = machine.run()
    elapsed = time.perf_counter() - t0
    if status.failed_reason:
        raise SystemExit(f"runtime failed: {status.failed_reason}")
    return elapsed, bytes(console.stdout), status.exit_code


def _qemu(root: Path, script: str) -> tuple[float, bytes, int]:
    """qemu-x86_64 running the same busybox sh; its children are qemu processes too
    (binfmt is not assumed: PATH points at wrappers that exec qemu on the applet)."""
    qemu = shutil.which("qemu-x86_64") or "qemu-x86_64"
    wrap = root.parent / "qemu-bin"
    if not wrap.exists():
        wrap.mkdir()
        for applet in APPLETS:
            path = wrap / applet
            path.write_text(f"#!/bin/sh\nexec {qemu} {root}/bin/busybox {applet} \"$@\"\n")
            path.chmod(0o755)
    t0 = time.perf_counter()
    proc = subprocess.run([qemu, str(root / "bin" / "busybox"), "sh", "-c", script],
                          capture_output=True, env={"PATH": str(wrap), "BIN": str(wrap)},
                          timeout=600)
    return time.perf_counter() - t0, proc.stdout, proc.returncode


def _best(runs: list[tuple[float, bytes, Any]]) -> tuple[float, bytes]:
    return min(r[0] for r in runs), runs[0][1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=200)
    parser.add_argument("--megabytes", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" /
                        "processes.json")
    args = parser.parse_args()
    if not BUSYBOX.exists() or shutil.which("qemu-x86_64") is None:
        raise SystemExit("needs busybox-static and qemu-user")
    cases = {
        "spawn": f"i=0; while [ $i -lt {args.spawns} ]; do $BIN/true; i=$((i+1)); done; "
                 "echo $i",
        "pipeline": "$BIN/seq 100000 | $BIN/sort -n | $BIN/tail -1",
        "pipe": f"$BIN/dd if=/dev/zero bs=65536 count={args.megabytes * 16} 2>/dev/null | "
                "$BIN/dd of=/dev/null bs=65536 2>&1 | $BIN/tail -1",
    }
    results: dict[str, Any] = {"machine": f"{platform.node()} ({platform.machine()}, "
                                          f"{len(__import__('os').sched_getaffinity(0))} cores)"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = _root(Path(tmp))
        for name, script in cases.items():
            here = [_here(root, script) for _ in range(args.reps)]
            qemu = [_qemu(root, script) for _ in range(args.reps)]
            h_time, h_out = _best(here)
            q_time, q_out = _best(qemu)
            if name != "pipe" and h_out != q_out:
                raise SystemExit(f"{name}: outputs differ: {h_out!r} vs {q_out!r}")
            if name == "spawn":
                h_fig, q_fig, unit = args.spawns / h_time, args.spawns / q_time, "spawns/s"
            elif name == "pipe":
                h_fig, q_fig, unit = args.megabytes / h_time, args.megabytes / q_time, "MiB/s"
            else:
                h_fig, q_fig, unit = h_time, q_time, "s"
            ratio = q_fig / h_fig if unit == "s" else h_fig / q_fig   # > 1: viridian faster
            results[name] = {"viridian": h_fig, "qemu": q_fig, "unit": unit, "ratio": ratio,
                             "viridian_s": [r[0] for r in here], "qemu_s": [r[0] for r in qemu]}
            rows.append((name, unit, f"{h_fig:,.1f}", f"{q_fig:,.1f}", f"{ratio:.2f}x",
                         statistics.median(r[0] for r in here)))
    table = Table(title="processes: viridian vs qemu-user (best of "
                        f"{args.reps}; same run)")
    for col in ("case", "unit", "viridian", "qemu-user", "speed vs qemu", "median s"):
        table.add_column(col)
    for name, unit, h, q, ratio, median in rows:
        table.add_row(name, unit, h, q, ratio, f"{median:.2f}")
    RichConsole().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
