"""Partition commands: create, ls, get, start, stop, delete, logs."""

from __future__ import annotations

import bisect
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

import click
from viridian.v1 import controller_pb2, types_pb2

from controller.cli._spec import (
    DEFAULT_DISK,
    DEFAULT_MAX_PROCESSES,
    GuestArgsCommand,
    build_spec,
    spec_options,
)
from controller.cli._wait import WaitTimeout, wait_for
from controller.cli.app import get_client
from controller.cli.client import cancel, paged
from controller.cli.colour import enabled as colour_enabled
from controller.cli.colour import paint_field
from controller.cli.completion import node_names, partition_names
from controller.cli.errors import CliError
from controller.cli.output import (
    Column,
    age,
    arch_name,
    enum_name,
    labels_text,
    phase_name,
    print_list,
    render_item,
    time_text,
)
from controller.cli.params import DURATION, KEY_VALUE, output_option, parse_duration
from controller.cli.sizes import format_size
from controller.cli.watch import WatchPrinter, ended_by_ctrl_c, follow

__all__ = ["COMMANDS", "PARTITION_COLUMNS", "PARTITION_FIELDS", "follow_logs"]

P = types_pb2.Partition
Phase = types_pb2.PartitionPhase

PARTITION_COLUMNS: list[Column[P]] = [
    Column("NAME", lambda p: p.name),
    Column("PHASE", lambda p: phase_name(p.status)),
    Column("NODE", lambda p: p.status.node or "-"),
    Column("VCPUS", lambda p: str(p.spec.vcpus)),
    Column("MEMORY", lambda p: format_size(p.spec.memory_bytes)),
    Column("IMAGE", lambda p: p.spec.image),
    Column("AGE", lambda p: age(p.status.created_at)),
    Column("RESTARTS", lambda p: str(p.status.restarts), wide=True),
    Column("EPOCH", lambda p: str(p.status.epoch) if p.status.epoch else "-", wide=True),
    Column("REASON", lambda p: p.status.reason or "-", wide=True),
    Column("LABELS", lambda p: labels_text(p.spec.labels), wide=True),
]


def _exit_code(p: P) -> str:
    return str(p.status.exit_code) if p.status.has_exit_code else "-"


def _restart(p: P) -> str:
    if p.spec.restart_policy == types_pb2.RESTART_POLICY_UNSPECIFIED:
        return "never"
    name = types_pb2.RestartPolicy.Name(p.spec.restart_policy)
    return name.removeprefix("RESTART_POLICY_").lower().replace("_", "-")


def _desired(p: P) -> str:
    if p.spec.desired_state == types_pb2.DESIRED_STATE_UNSPECIFIED:
        return "-"
    return enum_name(types_pb2.DesiredState.Name(p.spec.desired_state), "DESIRED_STATE_")


def _placement(p: P) -> str:
    parts = []
    if p.spec.node_selector:
        parts.append(f"node-selector {labels_text(p.spec.node_selector)}")
    if p.spec.anti_affinity_group:
        parts.append(f"anti-affinity {p.spec.anti_affinity_group} "
                     f"(max {p.spec.max_per_node or 1} per node)")
    if p.spec.placement_strategy:
        parts.append(f"strategy {p.spec.placement_strategy}")
    return "; ".join(parts) or "-"


PARTITION_FIELDS: list[Column[P]] = [
    Column("Name", lambda p: p.name),
    Column("Phase", lambda p: phase_name(p.status)),
    Column("Desired", _desired),
    Column("Reason", lambda p: p.status.reason or "-"),
    Column("Exit code", _exit_code),
    Column("Node", lambda p: p.status.node or "-"),
    Column("Epoch", lambda p: str(p.status.epoch) if p.status.epoch else "-"),
    Column("Image", lambda p: p.spec.image),
    Column("Image digest", lambda p: p.spec.image_digest or "-", wide=True),
    Column("Arch", lambda p: arch_name(p.status.arch)),
    Column("Entrypoint", lambda p: p.spec.entrypoint or "(the image's)"),
    Column("Workdir", lambda p: p.spec.workdir or "(the image's)"),
    Column("Args", lambda p: " ".join(p.spec.args) or "-"),
    Column("vCPUs", lambda p: str(p.spec.vcpus)),
    Column("Memory", lambda p: format_size(p.spec.memory_bytes)),
    Column("Disk", lambda p: format_size(p.spec.disk_bytes or DEFAULT_DISK)),
    Column("Max processes", lambda p: str(p.spec.max_processes or DEFAULT_MAX_PROCESSES)),
    Column("Restart", _restart),
    Column("Restarts", lambda p: str(p.status.restarts)),
    Column("HA", lambda p: "yes" if p.spec.ha else "no"),
    Column("Labels", lambda p: labels_text(p.spec.labels, "\n")),
    Column("Env", lambda p: labels_text(p.spec.env, "\n")),
    Column("Placement", _placement),
    Column("Created", lambda p: time_text(p.status.created_at)),
    Column("Started", lambda p: time_text(p.status.started_at)),
    Column("Finished", lambda p: time_text(p.status.finished_at)),
    Column("Revision", lambda p: str(p.revision), wide=True),
]


@click.command("create", cls=GuestArgsCommand)
@click.argument("name")
@spec_options(image_required=True)
@click.option("--start/--no-start", default=True, show_default=True,
              help="Start it at once (desired state Running) or only define it.")
@click.argument("args", nargs=-1)
@click.pass_context
def create_cmd(ctx: click.Context, /, name: str, args: tuple[str, ...], start: bool,
               **flags: object) -> None:
    """Create partition NAME running IMAGE with ARGS (after --)."""
    spec = build_spec(args=args, start=start, **flags)  # type: ignore[arg-type]
    part = get_client(ctx).stub.CreatePartition(
        controller_pb2.CreatePartitionRequest(name=name, spec=spec)
    )
    click.echo(f"partition {part.name} created ({phase_name(part.status)})")


PHASES = {name.removeprefix("PARTITION_PHASE_").lower(): value
          for name, value in Phase.items() if value != Phase.PARTITION_PHASE_UNSPECIFIED}


@click.command("ls")
@click.option("-l", "--selector", "selector", type=KEY_VALUE, multiple=True, metavar="K=V",
              help="Only partitions with this label (repeatable: all must match).")
@click.option("--node", default="", shell_complete=node_names,
              help="Only partitions bound to this node.")
@click.option("--phase", type=click.Choice(sorted(PHASES), case_sensitive=False),
              help="Only partitions in this phase.")
@click.option("--prefix", "name_prefix", default="", metavar="TEXT",
              help="Only partitions whose name starts with TEXT.")
@output_option
@click.option("-w", "--watch", is_flag=True,
              help="After the list, print a line per change until Ctrl-C.")
@click.pass_context
def ls_cmd(ctx: click.Context, selector: Sequence[tuple[str, str]], node: str,
           phase: str | None, name_prefix: str, output: str, watch: bool) -> None:
    """List partitions (the controller filters them, and sends them in pages)."""
    stub = get_client(ctx).stub
    wanted_phase = PHASES[phase.lower()] if phase else Phase.PARTITION_PHASE_UNSPECIFIED
    parts = paged(
        lambda token: stub.ListPartitions(controller_pb2.ListPartitionsRequest(
            label_selector=dict(selector), node=node, page_token=token,
            phase=wanted_phase, name_prefix=name_prefix)),
        lambda reply: reply.partitions)
    if not watch:
        print_list(parts, PARTITION_COLUMNS, output, click.echo)
        return

    def matches(p: P) -> bool:  # the list's filters, applied to what the watch sends
        return (p.name.startswith(name_prefix) and (not node or p.status.node == node)
                and (not wanted_phase or p.status.phase == wanted_phase)
                and all(p.spec.labels.get(k) == v for k, v in selector))

    watch_partitions(ctx, parts, output, "", matches)


def watch_partitions(ctx: click.Context, listed: Iterable[P], output: str, name: str,
                     matches: Callable[[P], bool] = lambda p: True) -> None:
    """Print `listed` as a table, then a line per change the controller's watch sends."""
    with ended_by_ctrl_c(ctx):
        printer = WatchPrinter(PARTITION_COLUMNS, output, key=lambda p: p.name,
                               status_header="PHASE")
        printer.start(listed)
        call = get_client(ctx).stub.WatchPartitions(
            controller_pb2.WatchPartitionsRequest(name=name))

        def handle(event: controller_pb2.PartitionWatchEvent) -> None:
            if event.type == controller_pb2.PartitionWatchEvent.TYPE_DELETED:
                printer.delete(event.partition.name)
            elif matches(event.partition):
                printer.put(event.partition)
            elif printer.showing(event.partition.name):
                # It no longer matches the filters: its last line shows why, then it leaves.
                printer.put(event.partition)
                printer.forget(event.partition.name)

        follow(ctx, call, handle)


@click.command("get")
@click.argument("name", shell_complete=partition_names)
@output_option
@click.option("-w", "--watch", is_flag=True,
              help="Print it as a table row, then a row per change until Ctrl-C.")
@click.pass_context
def get_cmd(ctx: click.Context, name: str, output: str, watch: bool) -> None:
    """Show one partition."""
    part = get_client(ctx).stub.GetPartition(controller_pb2.GetPartitionRequest(name=name))
    if watch:
        watch_partitions(ctx, [part], output, name)
        return
    text = render_item(part, PARTITION_FIELDS, output)
    if output in ("table", "wide") and colour_enabled(sys.stdout):
        text = paint_field(text, "Phase", "PHASE")
    click.echo(text)


def _check_wait(wait: bool, timeout: float | None) -> None:
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only makes sense with --wait")


def _await(ctx: click.Context, name: str, done: Callable[[P | None], bool],
           timeout: float | None, goal: str) -> P | None:
    try:
        found = wait_for(get_client(ctx).stub, name, done, timeout=timeout or 60.0)
    except WaitTimeout as err:
        where = phase_name(err.last.status) if err.last else "unknown"
        why = f" ({err.last.status.reason})" if err.last and err.last.status.reason else ""
        raise CliError(f"timed out waiting for {name} to be {goal}: "
                       f"still {where}{why}") from None
    if found is not None and found.status.phase == Phase.PARTITION_PHASE_FAILED:
        raise CliError(f"{name} failed: {found.status.reason or 'no reason given'}")
    return found


def started(initial: P) -> Callable[[P | None], bool]:
    """Done when Running, or Off with an exit code from a run that began after `initial`."""
    seen_other = False

    def done(p: P | None) -> bool:
        nonlocal seen_other
        if p is None:
            raise CliError(f"partition {initial.name} was deleted")
        phase = p.status.phase
        if phase in (Phase.PARTITION_PHASE_RUNNING, Phase.PARTITION_PHASE_FAILED,
                     Phase.PARTITION_PHASE_LOST):
            return True
        if phase == Phase.PARTITION_PHASE_OFF and p.status.has_exit_code:
            return seen_other or p.status.started_at != initial.status.started_at
        seen_other = seen_other or phase != Phase.PARTITION_PHASE_OFF
        return False

    return done


@click.command("start")
@click.argument("name", shell_complete=partition_names)
@click.option("--node", default="", shell_complete=node_names,
              help="Start on this node (default: placement chooses).")
@click.option("--wait", is_flag=True, help="Wait until it runs (or already finished).")
@click.option("--timeout", type=DURATION, help="With --wait: give up after this long (60s).")
@click.pass_context
def start_cmd(ctx: click.Context, name: str, node: str, wait: bool,
              timeout: float | None) -> None:
    """Start a partition (records desired state Running)."""
    _check_wait(wait, timeout)
    part = get_client(ctx).stub.StartPartition(
        controller_pb2.StartPartitionRequest(name=name, node=node))
    if not wait:
        click.echo(f"partition {name} start requested ({phase_name(part.status)})")
        return
    final = _await(ctx, name, started(part), timeout, "running")
    assert final is not None
    if final.status.phase == Phase.PARTITION_PHASE_LOST:
        raise CliError(f"{name} is Lost: {final.status.reason or 'its node is gone'}")
    click.echo(f"partition {name} {phase_name(final.status)}")


@click.command("stop")
@click.argument("name", shell_complete=partition_names)
@click.option("--grace", type=DURATION, default=None, metavar="SECONDS",
              help="Shut Down: send SIGTERM to every process of the guest and turn off "
              "whatever still runs this long after (default 10s, at most 1h).")
@click.option("--force", is_flag=True,
              help="Turn Off: end the guest at once, like pulling the plug.")
@click.option("--wait", is_flag=True, help="Wait until it is Off.")
@click.option("--timeout", type=DURATION,
              help="With --wait: give up after this long (60s, or the grace + 30s).")
@click.pass_context
def stop_cmd(ctx: click.Context, name: str, grace: float | None, force: bool, wait: bool,
             timeout: float | None) -> None:
    """Stop a partition (records desired state Off).

    By default this is Hyper-V's Shut Down: the guest's processes get SIGTERM and 10
    seconds (--grace) to end, then whatever still runs is turned off. --force is Turn Off:
    the guest ends at once. A stop under way can be made quicker (--force), not longer.
    """
    if force and grace is not None:
        raise CliError("--force and --grace do not go together: --force turns it off at "
                       "once (Turn Off), --grace shuts it down (Shut Down)")
    _check_wait(wait, timeout)
    request = controller_pb2.StopPartitionRequest(name=name, force=force)
    if grace is not None:
        request.grace_seconds = grace
    part = get_client(ctx).stub.StopPartition(request)
    if not wait:
        click.echo(f"partition {name} stop requested ({phase_name(part.status)})")
        return

    def done(p: P | None) -> bool:
        if p is None:
            raise CliError(f"partition {name} was deleted")
        return p.status.phase in (Phase.PARTITION_PHASE_OFF, Phase.PARTITION_PHASE_FAILED)

    if timeout is None:  # the guest may use its whole grace
        timeout = max(60.0, part.status.stop_grace_seconds + 30.0)
    final = _await(ctx, name, done, timeout, "Off")
    assert final is not None
    click.echo(f"partition {name} {phase_name(final.status)}")


@click.command("delete")
@click.argument("name", shell_complete=partition_names)
@click.option("--force", is_flag=True, help="Delete even while it runs (stops it first).")
@click.option("--wait", is_flag=True, help="Wait until it is gone.")
@click.option("--timeout", type=DURATION, help="With --wait: give up after this long (60s).")
@click.pass_context
def delete_cmd(ctx: click.Context, name: str, force: bool, wait: bool,
               timeout: float | None) -> None:
    """Delete a partition."""
    _check_wait(wait, timeout)
    get_client(ctx).stub.DeletePartition(
        controller_pb2.DeletePartitionRequest(name=name, force=force))
    if wait:
        _await(ctx, name, lambda p: p is None, timeout, "deleted")
        click.echo(f"partition {name} deleted")
    else:
        click.echo(f"partition {name} deletion requested")


def binary_stdout() -> BinaryIO:
    """stdout for raw bytes (guest output is not necessarily UTF-8)."""
    return sys.stdout.buffer


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a duration back from now (90s, 15m, 1h30m) or a time (ISO 8601, UTC
    unless it names a zone) -> Unix seconds."""
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration (90s, 15m, 1h30m) nor a "
                                 "time (2026-12-02T08:30:00Z)", param_hint="'--since'") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class TimestampedLines:
    """Prefixes each console line with when its first byte was written (from the marks)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.marks: list[tuple[int, float]] = []   # (offset, time), rising
        self.at_line_start = True

    def _time_at(self, offset: int) -> bytes:
        i = bisect.bisect_right(self.marks, (offset, math.inf)) - 1
        if i < 0:
            return b"-" + b" " * 26
        when = datetime.fromtimestamp(self.marks[i][1], UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()

    def write(self, chunk: controller_pb2.LogChunk) -> None:
        for m in chunk.marks:
            if math.isfinite(m.time) and (not self.marks or m.offset >= self.marks[-1][0]):
                self.marks.append((m.offset, m.time))
        pos = 0
        data = chunk.data
        while pos < len(data):
            if self.at_line_start:
                self.out.write(self._time_at(chunk.offset + pos) + b" ")
            nl = data.find(b"\n", pos)
            stop = len(data) if nl < 0 else nl + 1
            self.out.write(data[pos:stop])
            self.at_line_start = nl >= 0
            pos = stop
        if len(self.marks) > 4096:
            self.marks = self.marks[-1024:]


def follow_logs(ctx: click.Context, name: str, follow: bool, tail: int = 0,
                since: float = 0.0, timestamps: bool = False) -> None:
    """Write the console to stdout as raw bytes until EOF (or the stream ends)."""
    out = binary_stdout()
    stamped = TimestampedLines(out) if timestamps else None
    call = get_client(ctx).stub.PartitionLogs(
        controller_pb2.PartitionLogsRequest(name=name, follow=follow, tail_lines=tail,
                                            since=since, timestamps=timestamps))
    try:
        for chunk in call:
            if chunk.data:
                if stamped is not None:
                    stamped.write(chunk)
                else:
                    out.write(chunk.data)
                out.flush()
            if chunk.eof:
                break
    finally:
        cancel(call)


@click.command("logs")
@click.argument("name", shell_complete=partition_names)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the guest ends.")
@click.option("--tail", type=click.IntRange(1, 1_000_000), default=None, metavar="N",
              help="Only the last N lines kept (then new ones with --follow).")
@click.option("--since", "since_text", metavar="DURATION|TIME",
              help="Only output written since then: 90s, 15m, 1h30m, or an ISO 8601 time.")
@click.option("-t", "--timestamps", is_flag=True,
              help="Prefix each line with when it was written (UTC).")
@click.pass_context
def logs_cmd(ctx: click.Context, name: str, follow: bool, tail: int | None,
             since_text: str | None, timestamps: bool) -> None:
    """Print a partition's console output (kept across save, move and restore, the last
    1 MiB)."""
    since = parse_since(since_text) if since_text else 0.0
    try:
        follow_logs(ctx, name, follow, tail or 0, since, timestamps)
    except KeyboardInterrupt:
        ctx.exit(130)


COMMANDS = [create_cmd, ls_cmd, get_cmd, start_cmd, stop_cmd, delete_cmd, logs_cmd]
