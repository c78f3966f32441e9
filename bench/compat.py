"""Compatibility table (tests/compat): how many cases match the reference, per architecture.

Runs every case of tests/compat/compat_cases.CASES (the same table the tests use) outside
pytest: the program in a Machine and under the reference (qemu-user, or the host kernel where
a case declares qemu-user wrong), chrooted; compares stdout and exit code. Prints, per
architecture, cases / identical / equal after declared differences / failing and the pass
rate, then the failing cases grouped with their declared known gap (or "REGRESSION" for a
failing case without one, "NOW PASSES" for a passing case that still declares a gap).

Needs root (chroot, bind mounts), gcc with -m32, qemu-user and the Debian packages
busybox-static, bash-static, zsh-static, sash (.ci/run installs them).

Usage: python bench/compat.py [--only SUBSTRING[,SUBSTRING...]] [--json PATH] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "compat"))

from compat_cases import CASES, Case  # noqa: E402
from compat_runner import ProgramBuilder, Reference, Result, Unavailable, run_case  # noqa: E402
from rich.console import Console as RichConsole  # noqa: E402
from rich.table import Table  # noqa: E402

ARCHS = ("x86_64", "i386")


def run_all(cases: list[Case], console: RichConsole, verbose: bool) -> list[Result | str]:
    """Each case's Result, or the reason it could not run (a missing prerequisite)."""
    out: list[Result | str] = []
    with tempfile.TemporaryDirectory(prefix="viridian-bench-compat-") as tmp:
        work = Path(tmp)
        build = ProgramBuilder(work / "programs")
        (work / "programs").mkdir()
        reference = Reference(work / "qemu")
        for n, case in enumerate(cases):
            case_dir = work / f"case{n}"
            case_dir.mkdir()
            try:
                result: Result | str = run_case(case, case_dir, build, reference)
            except Unavailable as exc:
                result = f"unavailable: {exc}"
            out.append(result)
            if verbose:
                verdict = result if isinstance(result, str) else result.verdict
                console.print(f"[dim]{case.id}: {verdict}[/]")
    return out


def summarise(cases: list[Case], results: list[Result | str]) -> dict[str, Any]:
    per_arch: dict[str, Counter[str]] = {a: Counter() for a in ARCHS}
    rows: list[dict[str, Any]] = []
    for case, res in zip(cases, results, strict=True):
        verdict = "unavailable" if isinstance(res, str) else res.verdict
        per_arch[case.arch][verdict] += 1
        per_arch[case.arch]["cases"] += 1
        passed = verdict in ("identical", "declared")
        row: dict[str, Any] = {"id": case.id, "group": case.group, "arch": case.arch,
                               "verdict": verdict, "known_gap": case.known_gap,
                               "reference": case.reference}
        if isinstance(res, str):
            row["detail"] = res
        else:
            row["detail"] = res.detail
            row["seconds_here"] = round(res.here.seconds, 2)
            row["seconds_reference"] = round(res.reference.seconds, 2)
        if passed and case.known_gap:
            row["status"] = "NOW PASSES"
        elif not passed and verdict != "unavailable" and not case.known_gap:
            row["status"] = "REGRESSION"
        rows.append(row)
    totals = {}
    for arch, c in per_arch.items():
        ran = c["cases"] - c["unavailable"]
        ok = c["identical"] + c["declared"]
        totals[arch] = {"cases": c["cases"], "identical": c["identical"],
                        "declared": c["declared"], "failing": c["differs"],
                        "unavailable": c["unavailable"],
                        "pass_rate": round(ok / ran, 3) if ran else None}
    return {"per_arch": totals, "cases": rows}


def print_report(data: dict[str, Any], console: RichConsole) -> None:
    table = Table(title="compatibility vs reference (stdout + exit code)")
    for col in ("arch", "cases", "identical", "declared diffs", "failing", "unavailable",
                "pass rate"):
        table.add_column(col, justify="right" if col != "arch" else "left")
    for arch, t in data["per_arch"].items():
        rate = "-" if t["pass_rate"] is None else f"{100 * t['pass_rate']:.1f}%"
        table.add_row(arch, str(t["cases"]), str(t["identical"]), str(t["declared"]),
                      str(t["failing"]), str(t["unavailable"]), rate)
    console.print(table)
    by_reason: dict[str, list[str]] = defaultdict(list)
    for row in data["cases"]:
        if row["verdict"] in ("differs", "unavailable"):
            by_reason[row.get("status") or row["known_gap"] or row["verdict"]].append(row["id"])
    for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        console.print(f"[bold]{len(ids)} failing[/] — {reason}: [dim]{', '.join(ids)}[/]")
    for row in data["cases"]:
        if row.get("status") == "REGRESSION":
            console.print(f"[red]REGRESSION {row['id']}: {row['detail'][:400]}[/]")
        elif row.get("status") == "NOW PASSES":
            console.print(f"[green]NOW PASSES {row['id']} (remove its known_gap)[/]")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated substrings of case ids")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/compat.json")
    parser.add_argument("--verbose", action="store_true", help="print each case as it ends")
    args = parser.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    cases = [c for c in CASES if not wanted or any(w in c.id for w in wanted)]
    console = RichConsole(width=max(RichConsole().width, 150))
    t0 = time.perf_counter()
    results = run_all(cases, console, args.verbose)
    data = summarise(cases, results)
    data.update({"seconds": round(time.perf_counter() - t0, 1), "cpus": os.cpu_count(),
                 "command": " ".join(["python", "bench/compat.py", *sys.argv[1:]])})
    print_report(data, console)
    console.print(f"{len(cases)} cases in {data['seconds']} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"JSON: {args.json}")
    return 1 if any(r.get("status") == "REGRESSION" for r in data["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
