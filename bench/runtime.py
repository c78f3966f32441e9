"""Partition runtime benchmarks (issue 2): guest speed, syscall rate, start, memory, vCPUs.

One command, one table; every ratio is measured in the same run (absolute times drift on a
shared 2-core machine, ratios much less):

  speed     wall time of `python -m node_agent.runtime` (a fresh interpreter: start overhead
            included, nothing subtracted) vs qemu-x86_64 / qemu-i386 on the same static
            binaries: bench/guests/compute_loop.c (x86_64 and -m32) and busybox sha256sum of
            a 64 MiB file in the partition's root (qemu runs in a directory holding the same
            file). Outputs must be byte-identical (checksums), else the bench fails. The
            runtime's own start overhead (the same command on a guest that exits at once) is
            reported separately. Goal: <= 3x qemu-user.
  syscalls  bench/guests/syscall_rate.c: 1M getppid, 1M 16-byte writes to the guest's
            /dev/null, 1M 16-byte writes to stdout; timed by the guest (CLOCK_MONOTONIC around
            the loop). Run in-process with Machine.run and a console that counts and drops the
            bytes, each case twice in the same run: on the ctypes syscall path
            (VIRIDIAN_SYSCALL_FASTPATH=0, what the runtime did before issue 15) and on the C
            fast path (node_agent/runtime/syscall_fastpath.py); stdout is also run through
            `python -m` (TerminalConsole, host stdout = /dev/null). Goals (issue 15, fast
            path): >= 1,000,000 getppid/s, >= 800,000 16-byte writes/s (/dev/null, console).
  start     worker fork -> first guest instruction (first console byte), p50 over 100
            launches through WorkerManager (bench/runtime_start.py's measurement). Goal <= 20 ms.
  memory    PSS (/proc/PID/smaps_rollup) of one idle partition's worker (guest blocked in
            nanosleep), launched through WorkerManager (goal <= 16 MiB); then 200 idle
            partitions on one WorkerManager: all must run; total / per-partition PSS, time to
            launch all; all stopped afterwards and checked gone.
  vcpus     bench/guests/threads4.c (4 threads, deterministic checksum) with --vcpus 1 vs 4.

Usage: python bench/runtime.py [--quick] [--only speed,syscalls,start,memory,vcpus]
                               [--json PATH] [--reps N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console as RichConsole  # noqa: E402
from rich.table import Table  # noqa: E402

from node_agent.runtime.machine import Machine  # noqa: E402
from node_agent.runtime.spec import PartitionSpec  # noqa: E402
from node_agent.runtime.syscall_fastpath import ENV as FASTPATH_ENV  # noqa: E402
from node_agent.runtime.syscall_fastpath import available as fastpath_available  # noqa: E402
from node_agent.runtime.unicorn_build import build_info, is_patched  # noqa: E402
from node_agent.runtime.workers import WorkerHandle, WorkerManager  # noqa: E402

SECTIONS = ("speed", "syscalls", "start", "memory", "vcpus")
GUESTS = ROOT / "bench" / "guests"
PY = sys.executable
MiB = 1 << 20

GOAL_SPEED_RATIO = 3.0
GOAL_SYSCALLS_PER_S = 150_000          # issue 2's, for the CLI row
GOAL_GETPPID_PER_S = 1_000_000         # issue 15: the syscall fast path
GOAL_WRITES_PER_S = 800_000
GOAL_START_P50_MS = 20.0
GOAL_IDLE_PSS_MIB = 16.0


class BenchFailure(Exception):
    """A benchmark produced a wrong result (output mismatch, partition not running...)."""


@dataclass
class Row:
    """One line of the printed table."""

    section: str
    name: str
    value: str
    reference: str = ""
    ratio: str = ""
    goal: str = ""
    met: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)


# -- helpers ----------------------------------------------------------------------------
def build(src: Path, out: Path, m32: bool = False, extra: tuple[str, ...] = ()) -> Path:
    cmd = ["gcc", "-O2", "-static", *(["-m32"] if m32 else []), *extra, "-o", str(out),
           str(src), "-lpthread"]
    subprocess.run(cmd, check=True)
    return out


def timed(cmd: list[str], cwd: Path | None = None,
          stdout: int | None = subprocess.PIPE) -> tuple[float, str, str]:
    """(wall seconds, stdout, stderr) of one command; a non-zero exit is a failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchFailure(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return elapsed, proc.stdout or "", proc.stderr


def viridian_cmd(root: Path, entry: str, args: list[str], vcpus: int = 1) -> list[str]:
    return [PY, "-m", "node_agent.runtime", "--vcpus", str(vcpus), "--root", str(root), entry,
            "--", *args]


def qemu_for(m32: bool) -> str:
    return "qemu-i386" if m32 else "qemu-x86_64"


def pss_kib(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in KiB (Rss, Pss, Pss_Anon, Pss_File, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out


def fmt_s(x: float) -> str:
    return f"{x:.2f} s"


# -- 1. guest speed ------------------------------------------------------------------------
def bench_speed(rep: Report, work: Path, quick: bool, reps: int) -> None:
    root = work / "speed-root"
    root.mkdir()
    build(GUESTS / "compute_loop.c", root / "compute_loop")
    build(GUESTS / "compute_loop.c", root / "compute_loop32", m32=True)
    shutil.copy("/bin/busybox", root / "busybox")
    size = (16 if quick else 64) * MiB
    data = random.Random(2).randbytes(size)
    (root / "data.bin").write_bytes(data)
    import hashlib

    expect_sha = hashlib.sha256(data).hexdigest()
    del data
    rounds = "20" if quick else "80"

    # the runtime's own start overhead: the same command, a guest that exits at once
    starts = [timed(viridian_cmd(root, "/compute_loop", ["0"]))[0] for _ in range(max(reps, 3))]
    qstarts = [timed(["qemu-x86_64", str(root / "compute_loop"), "0"])[0]
               for _ in range(max(reps, 3))]
    overhead = statistics.median(starts)
    rep.data["speed"] = {"method": "python -m node_agent.runtime (fresh interpreter, wall)",
                         "reps": reps, "start_overhead_s": round(overhead, 3),
                         "qemu_start_s": round(statistics.median(qstarts), 3), "cases": {}}
    rep.add(Row("speed", "runtime start overhead (guest exits at once)", fmt_s(overhead),
                f"qemu {statistics.median(qstarts) * 1000:.0f} ms"))

    cases = [
        (f"compute_loop x86_64 ({rounds} rounds)", "/compute_loop", [rounds], False, None),
        (f"compute_loop i386 ({rounds} rounds)", "/compute_loop32", [rounds], True, None),
        (f"busybox sha256sum {size // MiB} MiB", "/busybox", ["sha256sum", "data.bin"], False,
         f"{expect_sha}  data.bin\n"),
    ]
    for name, entry, args, m32, expect in cases:
        vt: list[float] = []
        qt: list[float] = []
        outs: set[str] = set()
        for _ in range(reps):  # interleaved: drift hits both sides alike
            t, out, _err = timed([qemu_for(m32), "." + entry, *args], cwd=root)
            qt.append(t)
            outs.add("qemu:" + out)
            t, vout, _err = timed(viridian_cmd(root, entry, args))
            vt.append(t)
            if vout != out:
                raise BenchFailure(f"{name}: output differs: viridian {vout!r} vs qemu {out!r}")
        if expect is not None and out != expect:
            raise BenchFailure(f"{name}: wrong sha256 {out!r}, expected {expect!r}")
        if len(outs) != 1:
            raise BenchFailure(f"{name}: qemu output not deterministic: {outs}")
        v, q = statistics.median(vt), statistics.median(qt)
        ratio = v / q
        rep.data["speed"]["cases"][name] = {
            "viridian_s": round(v, 3), "qemu_s": round(q, 3), "ratio": round(ratio, 2),
            "ratio_without_start_overhead": round((v - overhead) / q, 2),
            "viridian_all_s": [round(x, 3) for x in vt], "qemu_all_s": [round(x, 3) for x in qt],
            "output": out.strip(), "outputs_identical": True}
        rep.add(Row("speed", name, fmt_s(v), f"{qemu_for(m32)} {fmt_s(q)}",
                    f"{ratio:.2f}x ({(v - overhead) / q:.2f}x w/o start)",
                    f"<= {GOAL_SPEED_RATIO:g}x", ratio <= GOAL_SPEED_RATIO))


# -- 2. syscall rate -------------------------------------------------------------------------
class CountingConsole:
    """A Console that counts stdout bytes and drops them; keeps stderr (the guest's report).

    A stdout write appends its length to a list (atomic under the GIL, so vCPU threads need
    no lock): the console's own cost stays small next to the runtime's path it measures
    (a lock taken per write cost ~0.2 us on the 2-core bench machine)."""

    def __init__(self) -> None:
        self._sizes: list[int] = []
        self.stderr = bytearray()
        self._lock = threading.Lock()

    @property
    def stdout_bytes(self) -> int:
        return sum(self._sizes)

    def write(self, fd: int, data: bytes) -> None:
        if fd == 2:
            with self._lock:
                self.stderr += data
        else:
            self._sizes.append(len(data))

    def read_stdin(self, n: int) -> bytes:
        return b""


def parse_rate(text: str, n: int) -> tuple[float, float]:
    """(syscalls/s, loop seconds) from the guest's "syscall_rate MODE n=N ns=T bad=0" line."""
    m = re.search(r"syscall_rate \w+ n=(\d+) ns=(\d+) bad=(\d+)", text)
    if not m or int(m.group(1)) != n or int(m.group(3)) != 0:
        raise BenchFailure(f"syscall_rate: bad report {text!r}")
    secs = int(m.group(2)) / 1e9
    return n / secs, secs


def bench_syscalls(rep: Report, work: Path, quick: bool) -> None:
    root = work / "sys-root"
    root.mkdir()
    exe = build(GUESTS / "syscall_rate.c", root / "syscall_rate")
    n = 200_000 if quick else 1_000_000
    res: dict[str, Any] = {"n": n, "method": "in-process Machine.run, counting console; "
                           "rate = n / guest-timed loop; each case on the ctypes path "
                           f"({FASTPATH_ENV}=0) and on the C fast path", "cases": {}}
    rep.data["syscalls"] = res
    if not fastpath_available():
        raise BenchFailure("the syscall fast path is not built (tools/build_syscall_hook.py)")
    labels = {"getppid": "getppid", "null": "write 16 B -> guest /dev/null",
              "stdout": "write 16 B -> stdout (counting console)"}
    goals = {"getppid": GOAL_GETPPID_PER_S, "null": GOAL_WRITES_PER_S,
             "stdout": GOAL_WRITES_PER_S}
    for mode, label in labels.items():
        _t, _o, qerr = timed(["qemu-x86_64", str(exe), mode, str(n)],
                             stdout=subprocess.DEVNULL)
        qrate, _ = parse_rate(qerr, n)
        ctypes_rate = 0.0
        for path in ("ctypes", "fast"):
            rate, secs, wall = _syscall_case(root, mode, n, fast=path == "fast")
            res["cases"][f"{label} ({path} path)"] = {
                "per_s": round(rate), "loop_s": round(secs, 3),
                "machine_run_wall_s": round(wall, 3), "qemu_per_s": round(qrate)}
            if path == "ctypes":
                ctypes_rate = rate
                rep.add(Row("syscalls", f"{label} (ctypes path, before)", f"{rate:,.0f}/s",
                            f"qemu {qrate:,.0f}/s", f"{rate / qrate:.3f}x qemu"))
            else:
                rep.add(Row("syscalls", f"{label} (fast path)", f"{rate:,.0f}/s",
                            f"qemu {qrate:,.0f}/s",
                            f"{rate / qrate:.3f}x qemu, {rate / ctypes_rate:.2f}x ctypes",
                            f">= {goals[mode]:,}/s", rate >= goals[mode]))
    # the same stdout loop through the CLI: TerminalConsole writes to the host's stdout
    _t, _o, err = timed(viridian_cmd(root, "/syscall_rate", ["stdout", str(n)]),
                        stdout=subprocess.DEVNULL)
    rate, secs = parse_rate(err, n)
    label = "write 16 B -> stdout (python -m, TerminalConsole -> host /dev/null)"
    res["cases"][label] = {"per_s": round(rate), "loop_s": round(secs, 3)}
    rep.add(Row("syscalls", label, f"{rate:,.0f}/s", "", "", f">= {GOAL_SYSCALLS_PER_S:,}/s",
                rate >= GOAL_SYSCALLS_PER_S))


def _syscall_case(root: Path, mode: str, n: int, fast: bool) -> tuple[float, float, float]:
    """(syscalls/s, loop seconds, Machine.run wall seconds) of one syscall_rate run, on the
    C fast path or on the ctypes path (the switch is read when a vCPU builds its hooks)."""
    console = CountingConsole()
    spec = PartitionSpec(name=f"sys-{mode}", root=root, entrypoint="/syscall_rate",
                         args=(mode, str(n)))
    saved = os.environ.get(FASTPATH_ENV)
    os.environ[FASTPATH_ENV] = "1" if fast else "0"
    try:
        t0 = time.perf_counter()
        status = Machine(spec, console).run()
        wall = time.perf_counter() - t0
    finally:
        if saved is None:
            del os.environ[FASTPATH_ENV]
        else:
            os.environ[FASTPATH_ENV] = saved
    if status.exit_code != 0:
        raise BenchFailure(f"syscall_rate {mode}: {status}")
    rate, secs = parse_rate(console.stderr.decode(errors="replace"), n)
    if mode == "stdout" and console.stdout_bytes != 16 * n:
        raise BenchFailure(f"stdout: console got {console.stdout_bytes} bytes, "
                           f"expected {16 * n}")
    return rate, secs, wall


# -- 3. start ---------------------------------------------------------------------------------
def bench_start(rep: Report, work: Path, quick: bool) -> None:
    spec = importlib.util.spec_from_file_location("runtime_start", ROOT / "bench/runtime_start.py")
    assert spec is not None and spec.loader is not None
    rs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rs)
    root = work / "start-root"
    root.mkdir()
    rs.build_guest(root)
    n = 20 if quick else 100
    mgr = WorkerManager(work / "start-run")
    try:
        t0 = time.monotonic()
        mgr.start_forkserver()
        server_ms = (time.monotonic() - t0) * 1000
        rs.one(mgr, root, -1)  # warm-up
        samples = [rs.one(mgr, root, i) for i in range(n)]
    finally:
        mgr.close()
    out: dict[str, Any] = {"runs": n, "forkserver_start_ms": round(server_ms, 1),
                           "method": "bench/runtime_start.py one(): launch() -> first console "
                                     "byte of tests/guests/worker_first.c"}
    for phase in rs.PHASES:
        values = sorted(s[phase] for s in samples)
        out[phase] = {"p50": round(statistics.median(values), 2),
                      "p90": round(values[min(len(values) - 1, int(len(values) * 0.9))], 2),
                      "max": round(values[-1], 2)}
    rep.data["start"] = out
    fb = out["first byte"]
    rep.add(Row("start", f"launch -> first guest instruction, p50 of {n}", f"{fb['p50']:.1f} ms",
                f"p90 {fb['p90']:.1f} ms, max {fb['max']:.1f} ms", "",
                f"<= {GOAL_START_P50_MS:g} ms", fb["p50"] <= GOAL_START_P50_MS))
    wr = out["worker ready"]
    rep.add(Row("start", "  of which: launch -> worker ready (Machine built)",
                f"{wr['p50']:.1f} ms", f"fork server start {server_ms:.0f} ms"))


# -- 4. memory ------------------------------------------------------------------------------
def wait_console(handle: WorkerHandle, text: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in handle.read_console(0)[0]:
        if handle.poll() is not None:
            raise BenchFailure(f"{handle.name} ended: {handle.poll()}")
        if time.monotonic() > deadline:
            raise BenchFailure(f"{handle.name}: no {text!r} on the console in {timeout}s")
        time.sleep(0.005)


def stop_all(mgr: WorkerManager, handles: list[WorkerHandle]) -> list[str]:
    """Stop every handle (in parallel), forget them; names of workers still alive after."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda h: h.stop(grace_s=10.0), handles))
    alive = [h.name for h in handles if h.alive()]
    for h in handles:
        if not h.alive():
            mgr.forget(h.name)
    return alive


def bench_memory(rep: Report, work: Path, quick: bool) -> None:
    root = work / "mem-root"
    root.mkdir()
    build(GUESTS / "idle.c", root / "idle")
    count = 20 if quick else 200
    mgr = WorkerManager(work / "mem-run")
    res: dict[str, Any] = {"method": "WorkerManager.launch, guest bench/guests/idle.c blocked "
                           "in nanosleep; PSS from /proc/PID/smaps_rollup"}
    rep.data["memory"] = res
    handles: list[WorkerHandle] = []
    try:
        mgr.start_forkserver()
        assert mgr._proc is not None
        server_pid = mgr._proc.pid
        # one idle partition, alone
        h = mgr.launch(PartitionSpec(name="idle-one", root=root, entrypoint="/idle"), epoch=1)
        handles.append(h)
        wait_console(h, b"idle", 30.0)
        time.sleep(0.5)
        one = pss_kib(h.pid)
        res["one"] = {k: one.get(k) for k in ("Rss", "Pss", "Pss_Anon", "Pss_File",
                                              "Shared_Clean", "Private_Dirty")}
        res["one"]["forkserver_Pss"] = pss_kib(server_pid).get("Pss")
        pss_mib = one["Pss"] / 1024
        rep.add(Row("memory", "idle partition worker PSS", f"{pss_mib:.1f} MiB",
                    f"RSS {one['Rss'] / 1024:.1f} MiB, anon PSS {one['Pss_Anon'] / 1024:.1f} MiB",
                    "", f"<= {GOAL_IDLE_PSS_MIB:g} MiB", pss_mib <= GOAL_IDLE_PSS_MIB))
        left = stop_all(mgr, handles)
        handles = []
        if left:
            raise BenchFailure(f"still alive after stop: {left}")

        # many idle partitions on one manager
        t0 = time.perf_counter()
        for i in range(count):
            handles.append(mgr.launch(PartitionSpec(name=f"idle-{i:03d}", root=root,
                                                    entrypoint="/idle"), epoch=1))
        launched = time.perf_counter() - t0
        for h in handles:
            wait_console(h, b"idle", 60.0)
        all_running = time.perf_counter() - t0
        time.sleep(1.0)
        running = [h for h in handles if h.poll() is None and h.alive()]
        if len(running) != count:
            raise BenchFailure(f"only {len(running)} of {count} idle partitions run")
        pss = [pss_kib(h.pid) for h in handles]
        total = sum(p["Pss"] for p in pss) / 1024
        server = pss_kib(server_pid)["Pss"] / 1024
        res["many"] = {"count": count, "all_running": True,
                       "launch_all_s": round(launched, 2),
                       "all_idle_on_console_s": round(all_running, 2),
                       "total_pss_mib": round(total, 1),
                       "per_partition_pss_mib": round(total / count, 2),
                       "forkserver_pss_mib": round(server, 1),
                       "total_rss_mib": round(sum(p["Rss"] for p in pss) / 1024, 1)}
        rep.add(Row("memory", f"{count} idle partitions: all running", f"{count}/{count}",
                    f"launched in {launched:.1f} s, all idle after {all_running:.1f} s"))
        rep.add(Row("memory", f"{count} idle partitions: total PSS", f"{total:.0f} MiB",
                    f"{total / count:.2f} MiB per partition", "",
                    f"<= {GOAL_IDLE_PSS_MIB:g} MiB each", total / count <= GOAL_IDLE_PSS_MIB))
        t1 = time.perf_counter()
        left = stop_all(mgr, handles)
        res["many"]["stop_all_s"] = round(time.perf_counter() - t1, 2)
        handles = []
        if left:
            raise BenchFailure(f"still alive after stop: {left}")
    finally:
        if handles:  # a failure above: do not leave workers behind
            stop_all(mgr, handles)
        mgr.close()
    leftovers = [p.name for p in (work / "mem-run" / "partitions").iterdir()
                 if not p.name.startswith(".")]
    res["leftover_partitions"] = leftovers
    if leftovers:
        raise BenchFailure(f"partition dirs left behind: {leftovers}")


# -- 5. vcpus --------------------------------------------------------------------------------
def bench_vcpus(rep: Report, work: Path, quick: bool, reps: int) -> None:
    root = work / "vcpu-root"
    root.mkdir()
    build(GUESTS / "threads4.c", root / "threads4")
    rounds = "24" if quick else "192"
    _q, expect, _e = timed(["qemu-x86_64", str(root / "threads4"), rounds])
    times: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(reps):
        for v in (1, 4):
            t, out, _err = timed(viridian_cmd(root, "/threads4", [rounds], vcpus=v))
            if out != expect:
                raise BenchFailure(f"threads4 --vcpus {v}: {out!r} != qemu {expect!r}")
            times[v].append(t)
    t1, t4 = statistics.median(times[1]), statistics.median(times[4])
    rep.data["vcpus"] = {"rounds": int(rounds), "vcpus1_s": round(t1, 3),
                         "vcpus4_s": round(t4, 3), "speedup": round(t1 / t4, 2),
                         "qemu_s": round(_q, 3), "output": expect.strip(),
                         "method": "python -m node_agent.runtime --vcpus N (wall)"}
    rep.add(Row("vcpus", f"threads4 ({rounds} rounds) --vcpus 4 vs 1", f"{fmt_s(t4)} vs "
                f"{fmt_s(t1)}", "2 cores: ceiling ~2x", f"{t1 / t4:.2f}x speed-up"))


# -- main -------------------------------------------------------------------------------------
def print_table(rep: Report, console: RichConsole) -> None:
    info = build_info()
    console.print(f"[bold]patched unicorn: {is_patched()}[/] (unicorn {info.get('unicorn')}, "
                  f"{info.get('library')}); machine: {os.cpu_count()} cores, "
                  f"{platform.python_implementation()} {platform.python_version()}")
    table = Table(title="Viridian partition runtime")
    for col in ("section", "benchmark", "measured", "reference", "ratio", "goal", "met"):
        table.add_column(col)
    for r in rep.rows:
        met = "" if r.met is None else ("[green]yes[/]" if r.met else "[red]NO[/]")
        table.add_row(r.section, r.name, r.value, r.reference, r.ratio, r.goal, met)
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer runs")
    parser.add_argument("--reps", type=int, help="runs per timed case (median); default 3, "
                        "1 with --quick")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/runtime.json")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        parser.error(f"unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    reps = args.reps or (1 if args.quick else 3)
    console = RichConsole(width=max(RichConsole().width, 150))
    rep = Report()
    rep.data.update({"patched_unicorn": is_patched(), "unicorn": build_info(),
                     "cpus": os.cpu_count(), "quick": args.quick, "sections": only,
                     "command": " ".join(["python", "bench/runtime.py", *sys.argv[1:]])})
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="viridian-bench-runtime-") as tmp:
        work = Path(tmp)
        for section in only:
            console.print(f"[dim]running {section}...[/]")
            t0 = time.perf_counter()
            try:
                if section == "speed":
                    bench_speed(rep, work, args.quick, reps)
                elif section == "syscalls":
                    bench_syscalls(rep, work, args.quick)
                elif section == "start":
                    bench_start(rep, work, args.quick)
                elif section == "memory":
                    bench_memory(rep, work, args.quick)
                elif section == "vcpus":
                    bench_vcpus(rep, work, args.quick, reps)
            except BenchFailure as exc:
                failures.append(f"{section}: {exc}")
                rep.add(Row(section, "FAILED", str(exc)[:120], met=False))
            rep.data.setdefault("section_seconds", {})[section] = round(
                time.perf_counter() - t0, 1)
    rep.data["failures"] = failures
    rep.data["goals_missed"] = [f"{r.section}: {r.name}" for r in rep.rows if r.met is False]
    print_table(rep, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rep.data, indent=2) + "\n")
    console.print(f"JSON: {args.json}")
    for f in failures:
        console.print(f"[red]bench failure: {f}[/]")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
