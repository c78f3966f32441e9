"""The watchdog file: the agent's contact deadline, shared with its workers.

RUN_DIR/workers/watchdog holds {"deadline": s, "ttl": s, "boot_id": str}. `deadline` is on
CLOCK_BOOTTIME (system-wide, monotonic, counts suspend): the instant after which the node
may have been declared lost, so nothing may run on it any more. The agent replaces the file
atomically each time the deadline moves; each worker stops its guest once the clock passes
it (worker_main._Watchdog), which covers an agent that is frozen and cannot fence. A file
from an earlier boot counts as expired (boot time restarts at zero).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = ["WATCHDOG_FILE", "read_deadline", "read_ttl", "write_deadline", "boot_id"]

WATCHDOG_FILE = "watchdog"  # in the workers' run dir, two levels above each partition's dir
_BOOT_ID: list[str] = []


def boot_id() -> str:
    if not _BOOT_ID:
        try:
            _BOOT_ID.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        except OSError:
            _BOOT_ID.append("")
    return _BOOT_ID[0]


def _load(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_deadline(path: Path) -> float | None:
    """The deadline in the file; None when there is no (readable) file: no agent."""
    data = _load(path)
    if data is None:
        return None
    deadline = data.get("deadline")
    if not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
        return None
    if data.get("boot_id") != boot_id():
        return -math.inf
    return float(deadline)


def read_ttl(path: Path) -> float | None:
    data = _load(path)
    ttl = None if data is None else data.get("ttl")
    return float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else None


def write_deadline(path: Path, deadline: float, ttl: float) -> None:
    """Replace the file atomically: a reader sees the old deadline or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"deadline": deadline, "ttl": ttl, "boot_id": boot_id()}))
    os.replace(tmp, path)
