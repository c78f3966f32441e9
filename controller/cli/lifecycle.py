"""Lifecycle commands as in Hyper-V: pause, resume, save, move (only while stopped), and
checkpoints. Each takes --wait [--timeout S] and then returns only in the resulting phase."""

from __future__ import annotations

from collections.abc import Callable

import click
from viridian.v1 import controller_pb2, types_pb2

from controller.cli.app import get_client
from controller.cli.completion import node_names, partition_names
from controller.cli.errors import CliError
from controller.cli.output import age, dump, message_data, phase_name, render_table
from controller.cli.params import DURATION, output_option
from controller.cli.partitions import _await, _check_wait
from controller.cli.sizes import format_size

__all__ = ["COMMANDS"]

P = types_pb2.Partition
Phase = types_pb2


def _phase_is(*phases: int) -> Callable[[P | None], bool]:
    def done(p: P | None) -> bool:
        if p is None:
            raise CliError("the partition was deleted while waiting")
        return p.status.phase in phases

    return done


def _finish(ctx: click.Context, name: str, part: P, wait: bool, timeout: float | None,
            verb: str, done: Callable[[P | None], bool], goal: str) -> None:
    if not wait:
        click.echo(f"partition {name} {verb} requested ({phase_name(part.status)})")
        return
    final = _await(ctx, name, done, timeout, goal)
    assert final is not None
    click.echo(f"partition {name} {phase_name(final.status)}")


def _lifecycle_command(verb: str, rpc: str, goal: str, *phases: int) -> click.Command:
    @click.command(verb)
    @click.argument("name", shell_complete=partition_names)
    @click.option("--wait", is_flag=True, help=f"Wait until it is {goal}.")
    @click.option("--timeout", type=DURATION, help="With --wait: give up after this long (60s).")
    @click.pass_context
    def command(ctx: click.Context, name: str, wait: bool, timeout: float | None) -> None:
        _check_wait(wait, timeout)
        stub = get_client(ctx).stub
        part = getattr(stub, rpc)(controller_pb2.PartitionRef(name=name))
        _finish(ctx, name, part, wait, timeout, verb, _phase_is(*phases), goal)

    command.help = f"{verb.capitalize()} a partition ({goal} when done)."
    return command


pause_cmd = _lifecycle_command("pause", "PausePartition", "Paused",
                               Phase.PARTITION_PHASE_PAUSED)
resume_cmd = _lifecycle_command("resume", "ResumePartition", "Running",
                                Phase.PARTITION_PHASE_RUNNING)
save_cmd = _lifecycle_command("save", "SavePartition", "Saved", Phase.PARTITION_PHASE_SAVED)


@click.command("move")
@click.argument("name", shell_complete=partition_names)
@click.option("--to", "to_node", required=True, shell_complete=node_names, help="Destination node.")
@click.option("--wait", is_flag=True, help="Return once the move is recorded (moves of "
              "stopped partitions take effect at once; the state travels at the next start).")
@click.option("--timeout", type=DURATION, help="With --wait: give up after this long (60s).")
@click.pass_context
def move_cmd(ctx: click.Context, name: str, to_node: str, wait: bool,
             timeout: float | None) -> None:
    """Move an Off or Saved partition to another node (no live migration)."""
    _check_wait(wait, timeout)
    part = get_client(ctx).stub.MovePartition(
        controller_pb2.MovePartitionRequest(name=name, to_node=to_node))
    click.echo(f"partition {name} moved to {to_node} ({phase_name(part.status)}); "
               f"`viridian start {name}` runs it there")


@click.group("checkpoint")
def checkpoint_group() -> None:
    """Checkpoints (Hyper-V snapshots): up to 50 per partition, each with memory."""


def _has_checkpoint(cp: str) -> Callable[[P | None], bool]:
    def done(p: P | None) -> bool:
        if p is None:
            raise CliError("the partition was deleted while waiting")
        found = [c for c in p.status.checkpoints if c.name == cp]
        if not found:
            raise CliError(f"checkpoint {cp} could not be taken (see `viridian events`)")
        return bool(found[0].state.digest) or found[0].taken_in == Phase.PARTITION_PHASE_OFF

    return done


@checkpoint_group.command("create")
@click.argument("name", shell_complete=partition_names)
@click.argument("checkpoint", required=False, default="")
@click.option("--wait", is_flag=True, help="Wait until the checkpoint is written.")
@click.option("--timeout", type=DURATION, help="With --wait: give up after this long (60s).")
@click.pass_context
def checkpoint_create(ctx: click.Context, name: str, checkpoint: str, wait: bool,
                      timeout: float | None) -> None:
    """Take a checkpoint of NAME (Running: a brief pause; Off: without memory)."""
    _check_wait(wait, timeout)
    part = get_client(ctx).stub.CreateCheckpoint(
        controller_pb2.CheckpointRequest(name=name, checkpoint=checkpoint))
    cp = part.status.checkpoints[-1].name if part.status.checkpoints else checkpoint
    if wait:
        _await(ctx, name, _has_checkpoint(cp), timeout, f"checkpointed as {cp}")
    click.echo(f"checkpoint {cp} of {name} {'taken' if wait else 'requested'}")


@checkpoint_group.command("ls")
@click.argument("name", shell_complete=partition_names)
@output_option
@click.pass_context
def checkpoint_ls(ctx: click.Context, name: str, output: str) -> None:
    """List NAME's checkpoints."""
    part = get_client(ctx).stub.GetPartition(controller_pb2.GetPartitionRequest(name=name))
    cps = list(part.status.checkpoints)
    if output in ("json", "yaml"):
        click.echo(dump([message_data(c) for c in cps], output))
        return
    rows = [(c.name, types_pb2.PartitionPhase.Name(c.taken_in).removeprefix(
        "PARTITION_PHASE_").capitalize(), c.state.node or "-",
        format_size(c.state.size_bytes) if c.state.size_bytes else "-",
        "taking" if not c.state.digest and c.taken_in != Phase.PARTITION_PHASE_OFF
        else age(c.created_at)) for c in cps]
    click.echo(render_table(["CHECKPOINT", "TAKEN WHILE", "NODE", "SIZE", "AGE"], rows))


@checkpoint_group.command("apply")
@click.argument("name", shell_complete=partition_names)
@click.argument("checkpoint")
@click.option("--wait", is_flag=True, help="Wait until it runs (or is Saved/Off) from it.")
@click.option("--timeout", type=DURATION, help="With --wait: give up after this long (60s).")
@click.pass_context
def checkpoint_apply(ctx: click.Context, name: str, checkpoint: str, wait: bool,
                     timeout: float | None) -> None:
    """Revert NAME to CHECKPOINT."""
    _check_wait(wait, timeout)
    part = get_client(ctx).stub.ApplyCheckpoint(
        controller_pb2.CheckpointRequest(name=name, checkpoint=checkpoint))
    running = part.status.phase == Phase.PARTITION_PHASE_STOPPING
    goal = (Phase.PARTITION_PHASE_RUNNING,) if running else (
        Phase.PARTITION_PHASE_SAVED, Phase.PARTITION_PHASE_OFF)
    _finish(ctx, name, part, wait, timeout, f"revert to {checkpoint}", _phase_is(*goal),
            "reverted")


@checkpoint_group.command("rm")
@click.argument("name", shell_complete=partition_names)
@click.argument("checkpoint")
@click.pass_context
def checkpoint_rm(ctx: click.Context, name: str, checkpoint: str) -> None:
    """Delete CHECKPOINT of NAME."""
    get_client(ctx).stub.DeleteCheckpoint(
        controller_pb2.CheckpointRequest(name=name, checkpoint=checkpoint))
    click.echo(f"checkpoint {checkpoint} of {name} deleted")


COMMANDS = [pause_cmd, resume_cmd, save_cmd, move_cmd, checkpoint_group]
