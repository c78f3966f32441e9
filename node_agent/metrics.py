"""A node agent's Prometheus metrics (docs/observability.md lists them).

Per partition, read at scrape time from what the host already keeps: the worker process's
CPU time (utime + stime in /proc/PID/stat: the emulator's host CPU, which is what the guest
costs this node), its resident memory (/proc/PID/statm: the guest memory it touched plus
the emulator's own), and the console's total bytes (the ring's end offset). Counters for
restarts, image pulls, saves and restores are updated where those happen.

Syscalls are counted by the worker into syscalls.bin in the partition directory
(runtime/syscall_counts.py) and exported by name, the ``TOP_SYSCALLS`` most frequent of
each partition (a bound on label cardinality: the guest picks the numbers). Instructions
executed are not exported: unicorn counts them only with a per-instruction hook, which
would cost more than the guest's own work."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node_agent.runtime.syscall_counts import OTHER, SYSCALLS_FILE, read_counts
from node_agent.runtime.worker_console import read_ring

SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
END = 1 << 62   # any offset past a console's end: read_ring answers with the end
#: syscalls exported per partition, the most frequent first
TOP_SYSCALLS = 10


class Worker:
    """What the collector needs of one running partition."""

    def __init__(self, name: str, pid: int, directory: Path) -> None:
        self.name, self.pid, self.dir = name, pid, directory


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields 14 and 15
    except (IndexError, ValueError):
        return None


def resident_bytes(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def console_bytes(directory: Path) -> int | None:
    """Bytes the guest ever wrote to its console (the ring's end offset)."""
    try:
        end = read_ring(directory / "console.log", END, 0)[1]
    except OSError:
        return None
    return None if end >= END else end   # END: no console file (yet)


def syscall_name(arch: str, nr: int) -> str:
    """The table's name for ``nr``; numbers the tables lack are named by number."""
    if nr == OTHER:
        return "other"
    return _names(arch).get(nr) or f"nr_{nr}"


_NAMES: dict[str, dict[int, str]] = {}


def _names(arch: str) -> dict[int, str]:
    if arch not in _NAMES:   # the tables import the syscall layer: only when first needed
        from node_agent.runtime.syscalls import entries

        _NAMES[arch] = {e.nr: e.name for e in entries(arch)}
    return _NAMES[arch]


def top_syscalls(directory: Path, n: int = TOP_SYSCALLS) -> list[tuple[str, str, int]]:
    """(arch, name, count) of the ``n`` syscalls a partition made most, most first."""
    counts = read_counts(directory / SYSCALLS_FILE)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [(arch, syscall_name(arch, nr), count) for (arch, nr), count in top]


class AgentMetrics:
    def __init__(self, node: str) -> None:
        self.node = node
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.restarts = Counter(
            "viridian_partition_restarts", "Launches of a partition this agent had launched "
            "before (a restart or a new epoch).", ["partition"], registry=r)
        self.pull_bytes = Counter(
            "viridian_agent_image_pull_bytes", "Image bytes downloaded into the cache.",
            registry=r)
        self.pull_seconds = Histogram(
            "viridian_agent_image_pull_seconds", "Duration of image downloads.",
            buckets=SLOW_BUCKETS, registry=r)
        self.save_seconds = Histogram(
            "viridian_partition_save_seconds", "Duration of saves (state written and "
            "stored).", buckets=SLOW_BUCKETS, registry=r)
        self.restore_seconds = Histogram(
            "viridian_partition_restore_seconds", "Duration of launches from a saved state.",
            buckets=SLOW_BUCKETS, registry=r)
        self._launched: set[str] = set()

    def launched(self, name: str) -> None:
        if name in self._launched:
            self.restarts.labels(name).inc()
        self._launched.add(name)

    def watch(self, workers: Callable[[], list[Worker]]) -> None:
        self.registry.register(PartitionCollector(workers))


class PartitionCollector(Collector):
    def __init__(self, workers: Callable[[], list[Worker]]) -> None:
        self.workers = workers

    def describe(self) -> Iterable[Metric]:
        return []   # skip auto-describe: collect() reads /proc

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("viridian_partition_cpu_seconds", "Host CPU time of the "
                                  "partition's worker (user + system).", labels=["partition"])
        mem = GaugeMetricFamily("viridian_partition_memory_bytes", "Resident memory of the "
                                "partition's worker (touched guest memory and the emulator).",
                                labels=["partition"])
        con = CounterMetricFamily("viridian_partition_console_bytes", "Bytes the guest wrote "
                                  "to its console.", labels=["partition"])
        calls = CounterMetricFamily("viridian_partition_syscalls", "Syscalls the partition "
                                    f"made, its {TOP_SYSCALLS} most frequent by name.",
                                    labels=["partition", "arch", "syscall"])
        running = 0
        for w in self.workers():
            seconds = cpu_seconds(w.pid)
            if seconds is None:
                continue
            running += 1
            cpu.add_metric([w.name], seconds)
            if (rss := resident_bytes(w.pid)) is not None:
                mem.add_metric([w.name], rss)
            if (written := console_bytes(w.dir)) is not None:
                con.add_metric([w.name], written)
            for arch, name, count in top_syscalls(w.dir):
                calls.add_metric([w.name, arch, name], count)
        yield cpu
        yield mem
        yield con
        yield calls
        yield GaugeMetricFamily("viridian_partitions_running", "Partitions whose worker runs "
                                "on this node.", value=running)
