"""Save/restore benchmark (issue 5): time and state-file size by partition size and touched memory.

For each (partition memory, MiB touched): a worker runs tests/guests/sr_mem.c, which fills
the touched MiB with non-zero data, then prints "a" every 5 ms. Measured through
WorkerManager, as the agent uses it:

  save      WorkerHandle.save(): pause + write the state file (fsync, rename) + worker exit
  restore   WorkerManager.launch(restore=) in a NEW manager on another run dir (another
            "node") until the guest prints again (fork + read state + first guest output;
            includes up to 5 ms of the guest's own sleep)
  size      the state file
  inside    the worker's own figures from events.jsonl ("Saved": state write only;
            "Restored": state applied)

Usage: python bench/save_restore.py [--json PATH] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node_agent.runtime.spec import PartitionSpec  # noqa: E402
from node_agent.runtime.workers import WorkerHandle, WorkerManager  # noqa: E402

CASES = [(64 << 20, 16), (1 << 30, 16), (1 << 30, 256), (16 << 30, 16), (16 << 30, 256),
         (64 << 30, 16), (64 << 30, 256)]


def wait_console(handle: WorkerHandle, pattern: bytes, offset: int = 0,
                 timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while pattern not in handle.read_console(offset)[0]:
        if time.monotonic() > deadline or handle.poll() is not None:
            raise RuntimeError(f"{handle.name}: no {pattern!r}: {handle.poll()}")
        time.sleep(0.001)


def inside(handle: WorkerHandle, reason: str) -> str:
    for r, message in handle.events():
        if r == reason:
            found = re.search(r"'seconds': ([0-9.]+)|in ([0-9.]+)s", message)
            if found:
                return f"{float(found.group(1) or found.group(2)):.3f}"
    return "?"


def one(tmp: Path, root: Path, memory: int, mib: int, rep: int) -> dict[str, object]:
    name = f"m{memory >> 20}-t{mib}-{rep}"
    a, b = WorkerManager(tmp / "node-a"), WorkerManager(tmp / "node-b")
    try:
        spec = PartitionSpec(name=name, root=root, entrypoint="/sr_mem", args=(str(mib),),
                             memory_bytes=memory, upper=tmp / "upper-a" / name)
        assert spec.upper is not None
        spec.upper.mkdir(parents=True)
        handle = a.launch(spec, 1)
        wait_console(handle, b"ready")
        state = tmp / f"{name}.state"
        t0 = time.perf_counter()
        handle.save(state)
        save_s = time.perf_counter() - t0
        save_inside = inside(handle, "Saved")
        upper_b = tmp / "upper-b" / name
        upper_b.mkdir(parents=True)
        spec_b = PartitionSpec(name=name, root=root, entrypoint="/sr_mem", args=(str(mib),),
                               memory_bytes=memory, upper=upper_b)
        b.start_forkserver()
        t0 = time.perf_counter()
        restored = b.launch(spec_b, 2, restore=state)
        wait_console(restored, b"a\n")
        restore_s = time.perf_counter() - t0
        restore_inside = inside(restored, "Restored")
        restored.stop(grace_s=2.0)
        size = state.stat().st_size
        state.unlink()
        return {"memory_mib": memory >> 20, "touched_mib": mib, "save_s": round(save_s, 3),
                "restore_s": round(restore_s, 3), "total_s": round(save_s + restore_s, 3),
                "state_mib": round(size / (1 << 20), 1), "save_inside_s": save_inside,
                "restore_inside_s": restore_inside}
    finally:
        a.close()
        b.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sr-"))
    try:
        root = tmp / "root"
        root.mkdir()
        subprocess.run(["gcc", "-O2", "-static", "-w", "-o", str(root / "sr_mem"),
                        str(ROOT / "tests" / "guests" / "sr_mem.c")], check=True)
        rows = [one(tmp, root, memory, mib, rep) for memory, mib in CASES
                for rep in range(args.reps)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cols = ["memory_mib", "touched_mib", "save_s", "restore_s", "total_s", "state_mib",
            "save_inside_s", "restore_inside_s"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
