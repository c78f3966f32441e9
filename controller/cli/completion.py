"""`viridian completion bash|zsh|fish` and the names it completes.

The script is click's own shell completion for `viridian` (it calls `viridian` back with
_VIRIDIAN_COMPLETE set). Partition, node and image names come from the controller the
command line (or the context) points at, asked with a short timeout; any failure completes
nothing rather than printing an error into the shell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import click
from click.shell_completion import CompletionItem, get_completion_class
from viridian.v1 import controller_pb2, controller_pb2_grpc

from controller.cli.client import DEFAULT_CONTROLLER, ChannelOptions, parse_addresses, probe
from controller.cli.contexts import load_config
from controller.cli.credentials import lookup
from controller.security.tls import token_credentials

__all__ = ["COMMANDS", "image_names", "node_names", "partition_names"]

log = logging.getLogger(__name__)
TIMEOUT_S = 1.5  # a shell waits for this; a slow controller completes nothing
SHELLS = ("bash", "zsh", "fish")
Complete = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def _stub(ctx: click.Context) -> tuple[controller_pb2_grpc.ControllerStub, Callable[[], None]]:
    """A stub for the controller the (partly parsed) command line names, else the
    context's, else the default: as the root command resolves it, without its messages."""
    params = ctx.find_root().params
    controller = params.get("controller")
    ca, token = params.get("ca_file"), params.get("token")
    token_file = params.get("token_file")
    chosen = load_config().context(params.get("context_name"))
    if chosen is not None:
        current = chosen[1]
        controller = controller or ",".join(current.controllers)
        ca = ca or current.ca or None
        token_file = token_file or (Path(current.token_file) if current.token_file else None)
    if token_file and not token:
        token = Path(token_file).read_text().strip()
    addresses = parse_addresses(controller or DEFAULT_CONTROLLER)
    if params.get("insecure"):
        options = ChannelOptions(connect_timeout=TIMEOUT_S)
    else:
        found = lookup(addresses, ca, token)
        options = ChannelOptions(connect_timeout=TIMEOUT_S,
                                 credentials=token_credentials(found.ca_pem, found.token))
    for address in addresses:
        channel = options.open(address)
        if probe(channel, TIMEOUT_S) is None:
            return controller_pb2_grpc.ControllerStub(channel), channel.close
        channel.close()
    raise ConnectionError("no controller answered")


def _complete(fetch: Callable[[controller_pb2_grpc.ControllerStub], Iterable[str]]
              ) -> Complete:
    def complete(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
        try:
            stub, close = _stub(ctx)
        except Exception as err:  # completion must never print into the shell
            log.debug("completion: %s", err)
            return []
        try:
            names = sorted(set(fetch(stub)))
        except Exception as err:
            log.debug("completion: %s", err)
            return []
        finally:
            close()
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]

    return complete


partition_names = _complete(lambda stub: [p.name for p in stub.ListPartitions(
    controller_pb2.ListPartitionsRequest(), timeout=TIMEOUT_S).partitions])
node_names = _complete(lambda stub: [n.name for n in stub.ListNodes(
    controller_pb2.ListNodesRequest(), timeout=TIMEOUT_S).nodes])
image_names = _complete(lambda stub: [
    ref for i in stub.ListImages(controller_pb2.ListImagesRequest(), timeout=TIMEOUT_S).images
    for ref in (i.name, f"{i.name}:{i.tag}")])


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion_cmd(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  eval "$(viridian completion bash)"      (e.g. in ~/.bashrc)
    zsh:   eval "$(viridian completion zsh)"       (e.g. in ~/.zshrc)
    fish:  viridian completion fish > ~/.config/fish/completions/viridian.fish
    """
    cls = get_completion_class(shell)
    assert cls is not None  # every shell of SHELLS is click's
    root = ctx.find_root().command
    click.echo(cls(root, {}, "viridian", "_VIRIDIAN_COMPLETE").source())


COMMANDS = [completion_cmd]
