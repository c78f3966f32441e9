"""`viridian set NAME …`: change a partition after create (UpdatePartition; Hyper-V's Set-VM).

Labels and the restart policy change at any time; vCPUs and memory only while it is Off
(vCPUs also while Saved): the controller refuses otherwise and says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import click
from viridian.v1 import controller_pb2

from controller.cli._spec import RESTART_POLICIES
from controller.cli.app import get_client
from controller.cli.completion import partition_names
from controller.cli.params import KEY_VALUE, SIZE

__all__ = ["COMMANDS", "asks_anything", "update_request"]


def update_request(name: str, *, labels: Sequence[tuple[str, str]] = (),
                   remove: Sequence[str] = (), restart: str | None = None,
                   vcpus: int | None = None, memory: int | None = None
                   ) -> controller_pb2.UpdatePartitionRequest:
    request = controller_pb2.UpdatePartitionRequest(
        name=name, set_labels=dict(labels), remove_labels=list(remove),
        vcpus=vcpus or 0, memory_bytes=memory or 0)
    if restart:
        request.restart_policy = RESTART_POLICIES[restart]
    return request


def asks_anything(request: controller_pb2.UpdatePartitionRequest) -> bool:
    """Whether the request asks for anything at all."""
    return bool(request.set_labels or request.remove_labels or request.restart_policy
                or request.vcpus or request.memory_bytes)


@click.command("set")
@click.argument("name", shell_complete=partition_names)
@click.option("--label", "labels", type=KEY_VALUE, multiple=True, metavar="K=V",
              help="Add or replace a label (repeatable).")
@click.option("--remove-label", "remove", multiple=True, metavar="KEY",
              help="Remove a label (repeatable).")
@click.option("--restart", type=click.Choice(list(RESTART_POLICIES)),
              help="Restart policy.")
@click.option("--vcpus", type=click.IntRange(min=1), help="vCPUs (only while Off or Saved).")
@click.option("--memory", type=SIZE,
              help="Guest memory, e.g. 512Mi, 1G (only while Off without a saved state).")
@click.pass_context
def set_cmd(ctx: click.Context, name: str, labels: Sequence[tuple[str, str]],
            remove: Sequence[str], restart: str | None, vcpus: int | None,
            memory: int | None) -> None:
    """Change partition NAME: labels and restart policy any time, vCPUs and memory while
    it is Off (as Hyper-V's Set-VM)."""
    request = update_request(name, labels=labels, remove=remove, restart=restart,
                             vcpus=vcpus, memory=memory)
    if not asks_anything(request):
        raise click.UsageError("nothing to change: give --label, --remove-label, --restart, "
                               "--vcpus or --memory")
    stub = get_client(ctx).stub
    before = stub.GetPartition(controller_pb2.GetPartitionRequest(name=name))
    after = stub.UpdatePartition(request)
    changed = after.revision != before.revision
    click.echo(f"partition {name} {'updated' if changed else 'unchanged'}")


COMMANDS = [set_cmd]
