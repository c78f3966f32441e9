"""The command line: `netns-cluster up` runs the cluster in the foreground until Ctrl-C or
SIGTERM, then removes everything; `netns-cluster down` removes what a crashed runner left.

The network faults act on a cluster that another `netns-cluster up` runs (found by its run
dir); they last until healed or until the cluster stops:

    netns-cluster blackhole --run-dir DIR controller-1 etcd-1,etcd-2,etcd-3
    netns-cluster heal --run-dir DIR controller-1 etcd-1,etcd-2,etcd-3   # or: heal --all
    netns-cluster netem --run-dir DIR etcd-2 --delay-ms 100 --jitter-ms 20 --loss-pct 5
    netns-cluster clear-netem --run-dir DIR etcd-2
    netns-cluster faults --run-dir DIR                                    # what is in force

Freezing (SIGSTOP) needs the runner's own process handles: use the Python API for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .cluster import NetnsCluster
from .errors import ClusterError
from .faults import Faults
from .launch import REPO
from .leftovers import STATE_FILE, down
from .network import namespace_prefix

__all__ = ["main"]

RUN_DIR = Path("/tmp/viridian-netns-cluster")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="netns-cluster",
        description="Run deploy/docker-compose.yml as processes in network namespaces (root).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up_p = sub.add_parser("up", help="start the cluster in the foreground (Ctrl-C stops it)")
    up_p.add_argument("-f", "--file", type=Path, default=REPO / "deploy" / "docker-compose.yml")
    up_p.add_argument("--timeout", type=float, default=90.0, help="health deadline (s)")
    up_p.add_argument("services", nargs="*", help="services to start (default: all)")
    down_p = sub.add_parser("down", help="remove what a runner with this run dir left")
    bh_p = sub.add_parser("blackhole", help="drop packets between A and B (comma lists)")
    heal_p = sub.add_parser("heal", help="undo a black hole (or --all)")
    for p in (bh_p, heal_p):
        p.add_argument("a", nargs="?" if p is heal_p else None)
        p.add_argument("b", nargs="?" if p is heal_p else None)
    heal_p.add_argument("--all", action="store_true", help="remove every black hole")
    netem_p = sub.add_parser("netem", help="delay / drop a service's outgoing packets")
    netem_p.add_argument("service")
    netem_p.add_argument("--delay-ms", type=float, default=0.0)
    netem_p.add_argument("--jitter-ms", type=float, default=0.0)
    netem_p.add_argument("--loss-pct", type=float, default=0.0)
    clear_p = sub.add_parser("clear-netem", help="end a service's netem")
    clear_p.add_argument("service")
    faults_p = sub.add_parser("faults", help="list the black holes and netem in force")
    for p in (up_p, down_p, bh_p, heal_p, netem_p, clear_p, faults_p):
        p.add_argument("--run-dir", type=Path, default=RUN_DIR)
    args = parser.parse_args(argv)

    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("netns-cluster: needs root and iproute2 (`ip`)", file=sys.stderr)
        return 2
    if args.cmd == "down":
        removed = down(args.run_dir.resolve())
        print("\n".join(removed) if removed else "nothing to remove")
        return 0
    if args.cmd != "up":
        try:
            return _fault_command(args)
        except ClusterError as err:
            print(f"netns-cluster: {err}", file=sys.stderr)
            return 1
    return _up(args)


def _running_faults(run_dir: Path) -> Faults:
    """The faults of the cluster a live runner keeps in run_dir (from its state file)."""
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ClusterError(f"no running cluster in {run_dir}: {err}") from err
    addresses = state.get("addresses") or {}
    if not addresses:
        raise ClusterError(f"the cluster in {run_dir} has no network yet")
    prefix = namespace_prefix(state["id"])
    return Faults(lambda svc: prefix + svc, addresses, run_dir / "faults")


def _fault_command(args: argparse.Namespace) -> int:
    faults = _running_faults(args.run_dir.resolve())
    known = set(faults.addresses)

    def group(text: str | None) -> list[str]:
        names = [n for n in (text or "").split(",") if n]
        unknown = set(names) - known
        if not names or unknown:
            raise ClusterError(f"unknown or missing services {sorted(unknown) or text!r}; "
                               f"the cluster has {', '.join(sorted(known))}")
        return names

    if args.cmd == "blackhole":
        faults.blackhole(group(args.a), group(args.b))
    elif args.cmd == "heal" and args.all:
        faults.heal_all()
    elif args.cmd == "heal":
        faults.heal(group(args.a), group(args.b))
    elif args.cmd == "netem":
        how = faults.netem(group(args.service)[0], args.delay_ms, args.jitter_ms,
                           args.loss_pct)
        print(f"{args.service}: {how}")
    elif args.cmd == "clear-netem":
        faults.clear_netem(group(args.service)[0])
    for svc in sorted(known):
        peers, netem = faults.blackholed(svc), faults.netem_state(svc)
        if peers or netem:
            print(f"{svc:<16} drops from: {','.join(peers) or '-'}  netem: {netem or '-'}")
    return 0


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # The first Ctrl-C / SIGTERM stops; later ones must not interrupt the clean-up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster = NetnsCluster(args.file, args.run_dir, services=args.services or None,
                           health_timeout=args.timeout)
    try:
        with cluster:
            print(f"cluster {cluster.id} on {cluster.bridge} ({cluster.subnet}); "
                  f"logs in {cluster.run_dir / 'logs'}")
            for svc in cluster.selected:
                print(f"  {svc:<16} {cluster.address(svc):<15} {cluster.namespace(svc)}")
            ctl = [f"{cluster.address(s)}:50051" for s in cluster.selected
                   if s.startswith("controller")]
            if ctl:
                print(f"try: viridian --controller {','.join(ctl)} nodes")
            print("Ctrl-C stops everything.", flush=True)
            while not stop.wait(1.0):
                pass
    except KeyboardInterrupt:
        pass
    except ClusterError as err:
        print(f"netns-cluster: {err}", file=sys.stderr)
        return 1
    print("netns-cluster: stopped and cleaned up")
    return 0
