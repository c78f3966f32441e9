"""What the partitions running here consume, read from /proc for their worker processes.

A partition's guest runs inside its worker process (vCPUs are threads of it), so the
worker's CPU time (utime + stime, every thread) is the guest's CPU time plus the runtime's,
and its resident set is the guest pages it touched plus the runtime. Cores used are the
CPU time between two samples over the wall time between them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import agent_pb2 as apb

__all__ = ["ProcSample", "read_proc", "UsageMeter", "INTERVAL_S"]

INTERVAL_S = 2.0
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcSample:
    cpu_seconds: float
    resident_bytes: int
    uptime_seconds: float
    starttime: int        # clock ticks after boot: tells the process from a reused pid


def _boot_uptime() -> float:
    with open("/proc/uptime", "rb") as f:
        return float(f.read().split()[0])


def read_proc(pid: int) -> ProcSample | None:
    """The process's CPU time, resident memory and age; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        uptime = _boot_uptime()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ")".
    fields = raw.rsplit(b")", 1)[-1].split()
    try:
        utime, stime = int(fields[11]), int(fields[12])
        start, rss = int(fields[19]), int(fields[21])
    except (IndexError, ValueError):
        return None
    return ProcSample((utime + stime) / _TICK, max(rss, 0) * _PAGE,
                      max(0.0, uptime - start / _TICK), start)


class UsageMeter:
    """Samples workers and keeps the previous sample of each to turn CPU time into cores."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], tuple[float, ProcSample]] = {}

    def measure(self, workers: list[tuple[str, int, int]]) -> apb.UsageReport:
        """One report for (name, epoch, pid) of every running worker."""
        now_mono, now = time.monotonic(), Timestamp()
        now.GetCurrentTime()
        seen: dict[tuple[str, int], tuple[float, ProcSample]] = {}
        report = apb.UsageReport()
        for name, epoch, pid in workers:
            sample = read_proc(pid)
            if sample is None:
                continue
            key = (name, epoch)
            cores = 0.0
            prev = self._last.get(key)
            if prev is not None and prev[1].starttime == sample.starttime \
                    and now_mono > prev[0]:
                cores = max(0.0, sample.cpu_seconds - prev[1].cpu_seconds) / (now_mono - prev[0])
            elif sample.uptime_seconds > 0:  # first sample: the average since it started
                cores = sample.cpu_seconds / sample.uptime_seconds
            seen[key] = (now_mono, sample)
            report.partitions.append(apb.PartitionUsage(
                name=name, epoch=epoch, cpu_seconds=sample.cpu_seconds, cpu_cores=cores,
                resident_bytes=sample.resident_bytes, uptime_seconds=sample.uptime_seconds,
                time=now))
        self._last = seen
        return report
