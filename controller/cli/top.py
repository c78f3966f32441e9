"""`viridian top` and `viridian top nodes`: resource use, like `kubectl top` (from WatchStats,
refreshed as the controller sends snapshots, until Ctrl-C; `--once` prints one table)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2

from controller.cli.app import get_client
from controller.cli.client import cancel
from controller.cli.output import enum_name, render_table
from controller.cli.sizes import format_size

PARTITION_HEADERS = ["NAME", "NODE", "PHASE", "CPU(cores)", "CPU%", "MEMORY", "MEMORY%",
                     "UPTIME"]
NODE_HEADERS = ["NAME", "CPU(cores)", "CPU%", "VCPUS(alloc/allocatable)", "MEMORY",
                "MEMORY%", "MEMORY(alloc/allocatable)", "PARTITIONS"]


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole > 0 else "-"


def duration_text(seconds: float) -> str:
    """1d2h, 3h4m, 5m6s, 7s."""
    s = int(max(seconds, 0.0))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d{h}h"
    if h:
        return f"{h}h{m}m"
    if m:
        return f"{m}m{s % 60}s"
    return f"{s}s"


def partition_rows(snap: cpb.StatsSnapshot, sort: str) -> list[list[str]]:
    parts = list(snap.partitions)
    if sort == "cpu":
        parts.sort(key=lambda p: (-p.cpu_cores, p.name))
    elif sort == "memory":
        parts.sort(key=lambda p: (-p.resident_bytes, p.name))
    rows = []
    for p in parts:
        phase = enum_name(types_pb2.PartitionPhase.Name(p.phase), "PARTITION_PHASE_")
        if p.measured:
            rows.append([p.name, p.node, phase, f"{p.cpu_cores:.2f}",
                         _pct(p.cpu_cores, p.vcpus), format_size(p.resident_bytes),
                         _pct(p.resident_bytes, p.memory_bytes),
                         duration_text(p.uptime_seconds)])
        else:
            rows.append([p.name, p.node, phase, "-", "-", "-", "-", "-"])
    return rows


def node_rows(snap: cpb.StatsSnapshot, sort: str) -> list[list[str]]:
    nodes = list(snap.nodes)
    if sort == "cpu":
        nodes.sort(key=lambda n: (-n.cpu_cores, n.name))
    elif sort == "memory":
        nodes.sort(key=lambda n: (-n.resident_bytes, n.name))
    return [[n.name, f"{n.cpu_cores:.2f}", _pct(n.cpu_cores, n.vcpus),
             f"{n.allocated_vcpus}/{n.allocatable_vcpus}", format_size(n.resident_bytes),
             _pct(n.resident_bytes, n.memory_bytes),
             f"{format_size(n.allocated_memory_bytes)}/"
             f"{format_size(n.allocatable_memory_bytes)}",
             str(n.partitions) if n.connected else "not connected"]
            for n in nodes]


def _snapshots(ctx: click.Context, node: str, interval: float,
               once: bool) -> Iterator[cpb.StatsSnapshot]:
    call = get_client(ctx).stub.WatchStats(cpb.WatchStatsRequest(
        node=node, interval_ms=int(interval * 1000), once=once))
    try:
        yield from call
    finally:
        cancel(call)


def _interactive() -> bool:
    return sys.stdout.isatty()


def _show(ctx: click.Context, node: str, interval: float, once: bool,
          headers: list[str], rows: Callable[[cpb.StatsSnapshot], list[list[str]]]) -> None:
    try:
        if once or not _interactive():
            first = True
            for snap in _snapshots(ctx, node, interval, once):
                if not first:
                    click.echo()
                click.echo(render_table(headers, rows(snap)))
                first = False
            return
        console = Console(file=sys.stdout)
        with Live(Text("waiting for the first snapshot…"), console=console,
                  auto_refresh=False) as live:
            for snap in _snapshots(ctx, node, interval, once=False):
                live.update(Text(render_table(headers, rows(snap))), refresh=True)
    except KeyboardInterrupt:
        ctx.exit(130)


_SORT = click.Choice(["cpu", "memory", "name"])


def _options(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--once", is_flag=True, help="Print one table and exit.")(f)
    f = click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0,
                     show_default=True, help="Seconds between refreshes.")(f)
    f = click.option("--sort", type=_SORT, default="cpu", show_default=True,
                     help="Order rows by CPU, memory or name.")(f)
    return f


@click.group("top", invoke_without_command=True)
@click.option("--node", default="", help="Only partitions bound to this node.")
@_options
@click.pass_context
def top_cmd(ctx: click.Context, node: str, once: bool, interval: float, sort: str) -> None:
    """Partitions' CPU and memory use (`top nodes` for nodes), refreshed until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    _show(ctx, node, interval, once, PARTITION_HEADERS, lambda s: partition_rows(s, sort))


@top_cmd.command("nodes")
@_options
@click.pass_context
def top_nodes_cmd(ctx: click.Context, once: bool, interval: float, sort: str) -> None:
    """Nodes' CPU and memory use against what they offer and what is allocated."""
    _show(ctx, "", interval, once, NODE_HEADERS, lambda s: node_rows(s, sort))


COMMANDS = [top_cmd]
