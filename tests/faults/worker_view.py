"""What actually runs: the partitions' worker processes on every node, read from the nodes'
run dirs on the host (the agents write them; nothing is asked of an agent).

A worker is live when its pid file `RUN/workers/partitions/DIR/pid` ("PID STARTTIME") names
a process that is alive (not a zombie) with that start time, so a reused pid never counts.
Its partition and epoch come from `meta.json` next to it. Directories the agent renamed away
(`.gone-*`) are read too: a live worker is counted wherever its directory is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from node_agent.runtime.forkserver import proc_starttime

__all__ = ["Worker", "alive", "scan", "starttime"]


@dataclass(frozen=True)
class Worker:
    node: str
    name: str
    pid: int
    start: int  # process start time (clock ticks after boot): with pid, the identity
    epoch: int | None  # from meta.json; None when it could not be read

    def __str__(self) -> str:
        return f"{self.name}@{self.node} pid {self.pid} epoch {self.epoch}"


# The process's start time, or None if it is gone or a zombie (the runtime's own reading).
starttime = proc_starttime


def alive(w: Worker) -> bool:
    """Whether this very process still lives (same pid and start time)."""
    return starttime(w.pid) == w.start


def _read(node: str, pdir: Path) -> Worker | None:
    try:
        pid_s, start_s = (pdir / "pid").read_text().split()[:2]
        pid, start = int(pid_s), int(start_s)
    except (OSError, ValueError):
        return None
    if starttime(pid) != start:
        return None
    name, epoch = pdir.name, None
    try:
        meta = json.loads((pdir / "meta.json").read_text())
        name, epoch = str(meta["name"]), int(meta["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Worker(node, name, pid, start, epoch)


def scan(run_dirs: Mapping[str, Path]) -> list[Worker]:
    """Every live worker of every node (node name -> the agent's run dir on the host)."""
    found: list[Worker] = []
    for node, run_dir in run_dirs.items():
        parts = run_dir / "workers" / "partitions"
        try:
            dirs: Iterable[Path] = list(parts.iterdir())
        except OSError:
            continue
        for pdir in dirs:
            w = _read(node, pdir)
            if w is not None:
                found.append(w)
    return found
