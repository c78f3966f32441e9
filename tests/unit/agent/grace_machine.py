"""A stand-in Machine for the stop tests, loaded by the fork server
(`WorkerManager(machine="grace_machine:RecordingMachine")`, with this directory on
PYTHONPATH): it records every stop(grace) as a JSON line in stops.jsonl in the partition
directory (the worker's cwd) and says "ready" on its console like worker_stdin. run() ends
when the grace of a stop has passed (at once for 0) with exit code 143, unless the
partition's name starts with "deaf": then it never ends (for the SIGKILL fallback)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from node_agent.runtime.spec import STOP_EXIT_CODE, Console, ExitStatus, PartitionSpec

STOPS = "stops.jsonl"


def recorded(pdir: Path) -> list[float]:
    """The graces stop() was called with, in order."""
    try:
        lines = (pdir / STOPS).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [float(json.loads(line)["grace"]) for line in lines]


class RecordingMachine:
    def __init__(self, spec: PartitionSpec, console: Console, on_event: Any = None) -> None:
        self.spec = spec
        self.console = console
        self.done = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> ExitStatus:
        self.console.write(1, b"ready\n")
        self.done.wait()
        return ExitStatus(STOP_EXIT_CODE, None, {})

    def stop(self, grace: float = 0.0) -> None:
        with self.lock, open(Path.cwd() / STOPS, "a") as f:
            f.write(json.dumps({"grace": grace}) + "\n")
        if self.spec.name.startswith("deaf"):
            return
        if grace <= 0:
            self.done.set()
        else:
            timer = threading.Timer(grace, self.done.set)
            timer.daemon = True
            timer.start()

    def pause(self, timeout: float = 10.0) -> None:
        raise RuntimeError("not in this stand-in")

    def resume(self) -> None:
        raise RuntimeError("not in this stand-in")

    def save_state(self, path: Path) -> Any:
        raise RuntimeError("not in this stand-in")

    def end_saved(self) -> None:
        raise RuntimeError("not in this stand-in")

    def count_syscalls(self, counts: Any) -> None:
        pass   # it makes no syscalls
