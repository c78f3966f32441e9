"""What a cluster leaves behind: the state file in its run dir that records it, down() that
removes it (after a crashed runner too), and leftovers() that lists what still exists."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import network
from .errors import ClusterError
from .services import alive, kill_pid

__all__ = ["STATE_FILE", "clear_stale", "down", "leftovers", "write_state"]

STATE_FILE = "netns-cluster.json"


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Replace the run dir's state file (atomically)."""
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.rename(run_dir / STATE_FILE)


def clear_stale(run_dir: Path) -> None:
    """Refuse a run dir that another live runner uses; remove a crashed runner's leftovers."""
    state_path = run_dir / STATE_FILE
    if state_path.exists():
        with contextlib.suppress(ValueError, OSError):
            owner = int(json.loads(state_path.read_text()).get("runner", 0))
            if owner and owner != os.getpid() and alive(owner):
                raise ClusterError(f"{run_dir} is in use by netns-cluster pid {owner}")
        down(run_dir)


def down(run_dir: Path, cluster_id: str | None = None) -> list[str]:
    """Remove everything a runner with this run dir (or id) created; return what was removed.

    Safe to call repeatedly and on a half-built cluster: it looks for the names by prefix.
    """
    state_path = run_dir / STATE_FILE
    state: dict[str, Any] = {}
    if state_path.exists():
        with contextlib.suppress(ValueError):
            state = json.loads(state_path.read_text())
    cid = cluster_id or state.get("id")
    if not cid:
        return []
    removed: list[str] = []
    namespaces = network.namespaces(cid, check=False)
    # Processes: everything inside each namespace, plus the process groups we started (an
    # `ip netns exec` that has not entered its namespace yet is not in it).
    pids: set[int] = set()
    for ns in namespaces:
        pids.update(network.netns_pids(ns))
    pgids = [int(p) for p in state.get("pgids", [])]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
                if sig == signal.SIGTERM:
                    os.killpg(pgid, signal.SIGCONT)
        for pid in pids:
            kill_pid(pid, sig)
            if sig == signal.SIGTERM:
                kill_pid(pid, signal.SIGCONT)  # a frozen process must see its SIGTERM
        deadline = time.monotonic() + (3.0 if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.05)
        for ns in namespaces:
            pids.update(network.netns_pids(ns))
    removed += [f"process {p}" for p in sorted(pids)]
    removed += network.remove(cid, namespaces)
    for pid_file in (run_dir / "faults").glob("*.pid"):  # the delayers ended with their netns
        pid_file.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    shutil.rmtree(run_dir / "bin", ignore_errors=True)
    return removed


def leftovers(cluster_id: str, run_dir: Path, running: Iterable[int]) -> list[str]:
    """What of the cluster still exists: namespaces, links, /etc/netns dirs, the `running`
    main processes, and any process working in or naming the run dir."""
    left: list[str] = []
    left += [f"netns {ns}" for ns in network.namespaces(cluster_id)]
    left += [f"link {link}" for link in network.links(cluster_id)]
    left += [f"dir {d}" for d in network.etc_dirs(cluster_id)]
    left += [f"iptables {rule}" for rule in network.forward_rules(cluster_id)]
    left += [f"process {pid}" for pid in running]
    inside = str(run_dir) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (cwd + "/").startswith(inside) or inside in cmdline:
            if alive(int(entry.name)):
                left.append(f"process {entry.name}: {cmdline.replace(chr(0), ' ')[:120]}")
    return left
