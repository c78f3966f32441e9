"""Node commands: nodes, node get|cordon|uncordon|drain."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click
from viridian.v1 import controller_pb2, types_pb2

from controller.cli.app import get_client
from controller.cli.client import cancel, paged
from controller.cli.colour import enabled as colour_enabled
from controller.cli.colour import paint_field
from controller.cli.completion import node_names
from controller.cli.errors import CliError
from controller.cli.output import (
    Column,
    age,
    arch_name,
    dump,
    labels_text,
    message_data,
    node_state_name,
    print_list,
    render_item,
    render_table,
    time_text,
)
from controller.cli.params import DURATION, output_option
from controller.cli.sizes import format_size
from controller.cli.watch import WatchPrinter, ended_by_ctrl_c, follow

__all__ = ["COMMANDS", "NODE_COLUMNS", "NODE_FIELDS"]

N = types_pb2.Node
OP = types_pb2.NodeOperation


def _vcpus(n: N) -> str:
    return f"{n.status.allocated_vcpus}/{n.status.allocatable_vcpus or n.spec.vcpus}"


def _memory(n: N) -> str:
    total = n.status.allocatable_memory_bytes or n.spec.memory_bytes
    return f"{format_size(n.status.allocated_memory_bytes)}/{format_size(total)}"


def _arches(n: N) -> str:
    return ",".join(arch_name(a) for a in n.spec.arches) or "-"


NODE_COLUMNS: list[Column[N]] = [
    Column("NAME", lambda n: n.name),
    Column("STATE", node_state_name),
    Column("VCPUS", _vcpus),
    Column("MEMORY", _memory),
    Column("PARTITIONS", lambda n: str(n.status.partitions)),
    Column("CORDONED", lambda n: "yes" if n.spec.cordoned else "no"),
    Column("AGE", lambda n: age(n.status.registered_at)),
    Column("ADDRESS", lambda n: n.spec.address or "-", wide=True),
    Column("ARCHES", _arches, wide=True),
    Column("LABELS", lambda n: labels_text(n.spec.labels), wide=True),
]

def operation_text(op: types_pb2.NodeOperation) -> str:
    """A drain or eviction in a few lines: state, times, what happened to what."""
    if not op.kind:
        return "-"
    state = OP.State.Name(op.state).removeprefix("STATE_").capitalize()
    lines = [f"{state} (started {time_text(op.started_at)}"
             + (f", ended {time_text(op.finished_at)})" if op.finished_at.seconds else ")")]
    if op.message:
        lines.append(op.message)
    lines += [f"  {name}: {what}" for name, what in sorted(op.done.items())]
    lines += [f"  {name}: FAILED: {why}" for name, why in sorted(op.failed.items())]
    if op.state == OP.STATE_RUNNING and op.pending:
        lines.append(f"  waiting for: {', '.join(op.pending)}")
    return "\n".join(lines)


NODE_FIELDS: list[Column[N]] = [
    Column("Name", lambda n: n.name),
    Column("State", node_state_name),
    Column("Reason", lambda n: n.status.reason or "-"),
    Column("Cordoned", lambda n: "yes" if n.spec.cordoned else "no"),
    Column("Address", lambda n: n.spec.address or "-"),
    Column("vCPUs", lambda n: f"{_vcpus(n)} allocated (host {n.spec.vcpus}, ratio "
           f"{n.spec.cpu_allocation_ratio or 4.0:g})"),
    Column("Memory", lambda n: f"{_memory(n)} allocated (ratio "
           f"{n.spec.memory_allocation_ratio or 1.0:g})"),
    Column("Partitions", lambda n: str(n.status.partitions)),
    Column("Arches", _arches),
    Column("Host arch", lambda n: n.spec.host_arch or "-"),
    Column("Labels", lambda n: labels_text(n.spec.labels, "\n")),
    Column("Agent", lambda n: n.spec.agent_version or "-"),
    Column("Registered", lambda n: time_text(n.status.registered_at)),
    Column("Last heartbeat", lambda n: time_text(n.status.last_heartbeat)),
    Column("Drain", lambda n: operation_text(n.status.drain)),
    Column("Eviction", lambda n: operation_text(n.status.eviction)),
    Column("Revision", lambda n: str(n.revision), wide=True),
]


@click.command("nodes")
@output_option
@click.option("--plan", is_flag=True,
              help="N+1 check: can the cluster lose its largest node and keep every HA "
              "partition running?")
@click.option("-w", "--watch", is_flag=True,
              help="After the list, print a line per change until Ctrl-C.")
@click.pass_context
def nodes_cmd(ctx: click.Context, output: str, plan: bool, watch: bool) -> None:
    """List nodes (or, with --plan, check spare capacity)."""
    stub = get_client(ctx).stub
    if watch and plan:
        raise click.UsageError("--watch lists nodes; it does not go with --plan")
    if not plan:
        nodes = paged(lambda token: stub.ListNodes(controller_pb2.ListNodesRequest(
            page_token=token)), lambda reply: reply.nodes)
        if watch:
            _watch_nodes(ctx, nodes, output)
        else:
            print_list(nodes, NODE_COLUMNS, output, click.echo)
        return
    result = stub.PlanCapacity(controller_pb2.PlanCapacityRequest())
    if output in ("json", "yaml"):
        click.echo(dump(message_data(result), output))
    else:
        rows = [(p, n) for p, n in sorted(result.moves.items())]
        rows += [(p, "(no node fits)") for p in result.unplaced]
        if rows:
            click.echo(render_table(["HA PARTITION", "WOULD RESTART ON"], rows))
        click.echo(("ok: " if result.ok else "NOT OK: ") + result.summary)
    if not result.ok:
        ctx.exit(1)


def _watch_nodes(ctx: click.Context, listed: Iterable[N], output: str) -> None:
    with ended_by_ctrl_c(ctx):
        printer = WatchPrinter(NODE_COLUMNS, output, key=lambda n: n.name,
                               status_header="STATE")
        printer.start(listed)
        call = get_client(ctx).stub.WatchNodes(controller_pb2.WatchNodesRequest())

        def handle(event: controller_pb2.NodeWatchEvent) -> None:
            if event.type == controller_pb2.NodeWatchEvent.TYPE_DELETED:
                printer.delete(event.node.name)
            else:
                printer.put(event.node)

        follow(ctx, call, handle)


@click.group("node")
def node_group() -> None:
    """Inspect, cordon, drain and remove one node."""


@node_group.command("get")
@click.argument("name", shell_complete=node_names)
@output_option
@click.pass_context
def get_cmd(ctx: click.Context, name: str, output: str) -> None:
    """Show one node."""
    node = get_client(ctx).stub.GetNode(controller_pb2.GetNodeRequest(name=name))
    text = render_item(node, NODE_FIELDS, output)
    if output in ("table", "wide") and colour_enabled(sys.stdout):
        text = paint_field(text, "State", "STATE")
    click.echo(text)


@node_group.command("cordon")
@click.argument("name", shell_complete=node_names)
@click.pass_context
def cordon_cmd(ctx: click.Context, name: str) -> None:
    """Stop placing new partitions on NAME."""
    get_client(ctx).stub.CordonNode(controller_pb2.CordonNodeRequest(name=name))
    click.echo(f"node {name} cordoned")


@node_group.command("uncordon")
@click.argument("name", shell_complete=node_names)
@click.pass_context
def uncordon_cmd(ctx: click.Context, name: str) -> None:
    """Allow placements on NAME again."""
    get_client(ctx).stub.UncordonNode(controller_pb2.CordonNodeRequest(name=name))
    click.echo(f"node {name} uncordoned")


@node_group.command("drain")
@click.argument("name", shell_complete=node_names)
@click.option("--deadline", type=DURATION, default="1h", show_default=True,
              help="Give up after this long, e.g. 30m, 1h30m.")
@click.pass_context
def drain_cmd(ctx: click.Context, name: str, deadline: float) -> None:
    """Cordon NAME and move its partitions away, printing progress.

    The drain is recorded and carried out by the controller: stopping this command (Ctrl-C)
    does not stop it; `viridian node get NAME` shows where it stands, and `viridian node
    uncordon NAME` cancels it."""
    if deadline <= 0:
        raise click.UsageError("--deadline must be positive")
    call = get_client(ctx).stub.DrainNode(
        controller_pb2.DrainNodeRequest(name=name, deadline_seconds=max(1, round(deadline))))
    last: controller_pb2.DrainProgress | None = None
    try:
        for progress in call:
            last = progress
            click.echo(f"[{progress.remaining} left] {progress.message}")
            if progress.done or progress.failed:
                break
    except KeyboardInterrupt:
        cancel(call)
        click.echo(f"stopped following; the drain goes on in the controller "
                   f"(viridian node get {name})", err=True)
        ctx.exit(130)
    if last is not None:
        for pname, why in sorted(last.drain.failed.items()):
            click.echo(f"  {pname}: could not move: {why}", err=True)
    if last is None or last.failed:
        raise CliError(f"drain of {name} failed: "
                       f"{last.message if last else 'the stream ended without progress'}")
    if not last.done:
        raise CliError(f"drain of {name} ended before the node was empty")
    click.echo(f"node {name} drained")


@node_group.command("rm")
@click.argument("name", shell_complete=node_names)
@click.option("--force", is_flag=True,
              help="Also when partitions are still bound to it: they are evicted (HA ones "
              "restart elsewhere, the others become Lost).")
@click.pass_context
def rm_cmd(ctx: click.Context, name: str, force: bool) -> None:
    """Remove a dead node for good (refused while its agent is connected)."""
    reply = get_client(ctx).stub.RemoveNode(
        controller_pb2.RemoveNodeRequest(name=name, force=force))
    for pname in reply.evicted:
        click.echo(f"evicted {pname}")
    click.echo(f"node {name} removed")


COMMANDS = [nodes_cmd, node_group]
