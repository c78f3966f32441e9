"""The partition-spec flags shared by `create`, `run` and `explain --dry-run`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from viridian.v1 import types_pb2

from controller.cli.completion import image_names
from controller.cli.params import KEY_VALUE, SIZE

__all__ = ["DEFAULT_MEMORY", "RESTART_POLICIES", "GuestArgsCommand", "build_spec", "spec_options"]

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_MEMORY = 64 * 1024 * 1024
RESTART_POLICIES = {
    "never": types_pb2.RESTART_POLICY_NEVER,
    "on-failure": types_pb2.RESTART_POLICY_ON_FAILURE,
    "always": types_pb2.RESTART_POLICY_ALWAYS,
}


class GuestArgsCommand(click.Command):
    """Everything after `--` is the guest's argv, never NAME or an option of ours.

    click would otherwise hand the first word after `--` to the optional NAME argument.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            head, tail = args[:cut], args[cut + 1 :]
        else:
            head, tail = list(args), []
        rest = super().parse_args(ctx, head)
        ctx.params["args"] = tuple(ctx.params.get("args") or ()) + tuple(tail)
        return rest


#: What a partition gets without --disk (the agent's default; node_agent.runtime.spec).
DEFAULT_DISK = 1 << 30
#: ... and without --max-processes.
DEFAULT_MAX_PROCESSES = 512


def spec_options(*, image_required: bool, placement_only: bool = False) -> Callable[[F], F]:
    """Decorate a command with the spec flags; `placement_only` keeps those placement reads."""

    def decorate(func: F) -> F:
        opts: list[Callable[[Any], Any]] = [
            click.option("--image", required=image_required, metavar="REF",
                         shell_complete=image_names,
                         help="A pushed image: NAME[:TAG] (tag: latest) or NAME@sha256:HEX."),
            click.option("--vcpus", type=click.IntRange(min=1), default=1, show_default=True),
            click.option("--memory", type=SIZE, default="64Mi", show_default=True,
                         help="Guest memory, e.g. 512Mi, 2Gi."),
            click.option("--node-selector", "node_selector", type=KEY_VALUE, multiple=True,
                         metavar="K=V", help="Node label that must match (repeatable)."),
            click.option("--anti-affinity", "anti_affinity", metavar="GROUP",
                         help="Spread members of GROUP over nodes."),
            click.option("--max-per-node", "max_per_node", type=click.IntRange(min=1),
                         help="At most N members of the anti-affinity group per node."),
            click.option("--strategy", type=click.Choice(["binpack", "spread"]),
                         help="Placement strategy (default: the cluster's)."),
        ]
        if not placement_only:
            opts += [
                click.option("--env", "env", type=KEY_VALUE, multiple=True, metavar="K=V",
                             help="Guest environment variable (repeatable)."),
                click.option("--workdir", metavar="PATH",
                             help="Guest working directory (overrides the image's)."),
                click.option("--entrypoint", metavar="PROGRAM",
                             help="Run PROGRAM instead of the image's entrypoint and its fixed "
                             "arguments, as docker run --entrypoint."),
                click.option("--label", "labels", type=KEY_VALUE, multiple=True, metavar="K=V",
                             help="Partition label (repeatable)."),
                click.option("--restart", type=click.Choice(list(RESTART_POLICIES)),
                             default="never", show_default=True),
                click.option("--ha", is_flag=True,
                             help="Cold-restart elsewhere when its node is lost."),
                click.option("--disk", type=SIZE,
                             help="Writable-layer quota, e.g. 4Gi (default 1Gi); the guest "
                             "gets ENOSPC beyond it."),
                click.option("--max-processes", "max_processes",
                             type=click.IntRange(min=1, max=4096),
                             help="Processes the partition may hold at once, pid 1 included "
                             "(default 512); fork gets EAGAIN beyond it."),
            ]
        for opt in reversed(opts):
            func = opt(func)
        return func

    return decorate


def build_spec(
    *,
    image: str | None,
    vcpus: int = 1,
    memory: int = DEFAULT_MEMORY,
    node_selector: Sequence[tuple[str, str]] = (),
    anti_affinity: str | None = None,
    max_per_node: int | None = None,
    strategy: str | None = None,
    env: Sequence[tuple[str, str]] = (),
    labels: Sequence[tuple[str, str]] = (),
    restart: str = "never",
    ha: bool = False,
    disk: int | None = None,
    max_processes: int | None = None,
    workdir: str | None = None,
    entrypoint: str | None = None,
    args: Sequence[str] = (),
    start: bool = True,
    stdin: bool = False,
) -> types_pb2.PartitionSpec:
    """A PartitionSpec from the flags; refuses combinations that make no sense."""
    if max_per_node is not None and not anti_affinity:
        raise click.UsageError("--max-per-node needs --anti-affinity GROUP")
    if workdir is not None and not workdir.startswith("/"):
        raise click.UsageError("--workdir must be an absolute guest path")
    if entrypoint is not None and not entrypoint:
        raise click.UsageError("--entrypoint must not be empty")
    return types_pb2.PartitionSpec(
        image=image or "",
        args=list(args),
        env=dict(env),
        vcpus=vcpus,
        memory_bytes=memory,
        restart_policy=RESTART_POLICIES[restart],
        ha=ha,
        labels=dict(labels),
        node_selector=dict(node_selector),
        anti_affinity_group=anti_affinity or "",
        max_per_node=max_per_node or 0,
        placement_strategy=strategy or "",
        desired_state=types_pb2.DESIRED_STATE_RUNNING if start else types_pb2.DESIRED_STATE_OFF,
        stdin=stdin,
        disk_bytes=disk or 0,
        max_processes=max_processes or 0,
        workdir=workdir or "",
        entrypoint=entrypoint or "",
    )
