"""The command line: `netns-cluster up` runs the cluster in the foreground until Ctrl-C or
SIGTERM, then removes everything; `netns-cluster down` removes what a crashed runner left."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .cluster import NetnsCluster
from .errors import ClusterError
from .launch import REPO
from .leftovers import down

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="netns-cluster",
        description="Run deploy/docker-compose.yml as processes in network namespaces (root).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up_p = sub.add_parser("up", help="start the cluster in the foreground (Ctrl-C stops it)")
    up_p.add_argument("-f", "--file", type=Path, default=REPO / "deploy" / "docker-compose.yml")
    up_p.add_argument("--run-dir", type=Path, default=Path("/tmp/viridian-netns-cluster"))
    up_p.add_argument("--timeout", type=float, default=90.0, help="health deadline (s)")
    up_p.add_argument("services", nargs="*", help="services to start (default: all)")
    down_p = sub.add_parser("down", help="remove what a runner with this run dir left")
    down_p.add_argument("--run-dir", type=Path, default=Path("/tmp/viridian-netns-cluster"))
    args = parser.parse_args(argv)

    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("netns-cluster: needs root and iproute2 (`ip`)", file=sys.stderr)
        return 2
    if args.cmd == "down":
        removed = down(args.run_dir.resolve())
        print("\n".join(removed) if removed else "nothing to remove")
        return 0

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
