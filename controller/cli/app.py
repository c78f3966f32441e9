"""The `viridian` click group: global options, the client in the context, error mapping."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click
import grpc

from controller.cli import interrupt
from controller.cli.client import DEFAULT_CONTROLLER, ControllerClient, parse_addresses
from controller.cli.colour import error_prefix
from controller.cli.contexts import load_config
from controller.cli.errors import CliError, describe_rpc_error
from controller.cli.params import DEFAULT_OUTPUT_KEY
from controller.safe_text import escape_controls

__all__ = ["cli", "get_client", "main"]

#: Commands that never read the context: the config commands (which repair it), completion
#: scripts, and the servers (a controller or agent must not depend on a user's CLI config).
LOCAL_COMMANDS = frozenset({"config", "completion", "up", "controller", "agent", "certs"})


def _prefix() -> str:
    return error_prefix(sys.stderr)


#: The module (under controller.cli) that defines each command. A command imports only its
#: own module when it runs: importing them all made every command load the OCI image and
#: runtime code, a third of `viridian ls`'s start-up. tests/unit/cli checks this against
#: each module's COMMANDS.
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(["create", "ls", "get", "start", "stop", "delete", "logs"], "partitions"),
    **dict.fromkeys(["pause", "resume", "save", "move", "checkpoint"], "lifecycle"),
    **dict.fromkeys(["nodes", "node"], "nodes"),
    **dict.fromkeys(["up", "controller", "agent", "certs"], "servers"),
    "run": "run", "image": "images", "events": "events", "explain": "explain",
    "token": "tokens", "set": "update", "apply": "apply", "config": "contexts",
    "completion": "completion", "version": "version", "top": "top",
}


class ViridianGroup(click.Group):
    """Root group: loads each command's module when the command is asked for; turns
    CliError and gRPC errors into `error: <message>` and exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(f"controller.cli.{COMMAND_MODULES[cmd_name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as err:
            click.echo(f"{_prefix()} {escape_controls(str(err))}", err=True)
            ctx.exit(err.exit_code)
        except grpc.RpcError as err:
            client = ctx.obj if isinstance(ctx.obj, ControllerClient) else None
            address = client.address if client and client.address else None
            if address is None and client is not None:
                address = ", ".join(client.addresses)
            # The details may carry an agent's text: never raw control characters.
            click.echo(f"{_prefix()} {escape_controls(describe_rpc_error(err, address))}",
                       err=True)
            ctx.exit(1)
        finally:
            if isinstance(ctx.obj, ControllerClient):
                ctx.obj.close()


@click.group(cls=ViridianGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--controller",
    "controller",
    envvar="VIRIDIAN_CONTROLLER",
    metavar="ADDR[,ADDR…]",
    help="Controller address; a comma-separated list is tried in order (failover). "
    f"Default: the context's, else {DEFAULT_CONTROLLER}. Env: VIRIDIAN_CONTROLLER.",
)
@click.option("--context", "context_name", envvar="VIRIDIAN_CONTEXT", metavar="NAME",
              help="Use this context of the config file instead of the current one "
              "(viridian config get-contexts). Env: VIRIDIAN_CONTEXT.")
@click.option(
    "--connect-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds to wait for each controller address to answer.",
)
@click.option("--token", envvar="VIRIDIAN_TOKEN", metavar="ID.SECRET",
              help="Bearer token (default: the one `viridian up` saved for the address). "
              "Env: VIRIDIAN_TOKEN.")
@click.option("--token-file", envvar="VIRIDIAN_TOKEN_FILE", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Read the token from FILE (e.g. a mounted secret). Env: VIRIDIAN_TOKEN_FILE.")
@click.option("--ca", "ca_file", envvar="VIRIDIAN_CA", metavar="FILE",
              help="The cluster CA certificate (default: the one saved for the address). "
              "Env: VIRIDIAN_CA.")
@click.option("--insecure", is_flag=True, envvar="VIRIDIAN_INSECURE",
              help="Plaintext, no credentials: only for a cluster started with --insecure.")
@click.version_option(package_name="viridian", prog_name="viridian")
@click.pass_context
def cli(ctx: click.Context, controller: str | None, context_name: str | None,
        connect_timeout: float, token: str | None, token_file: Path | None,
        ca_file: str | None, insecure: bool) -> None:
    """Viridian: run emulated partitions on a cluster of nodes."""
    # A flag (or its environment variable) wins, then the context, then the default. The
    # config commands must work even when the current context is broken: they skip it.
    if ctx.invoked_subcommand not in LOCAL_COMMANDS:
        chosen = load_config().context(context_name)
        if chosen is not None:
            _, current = chosen
            controller = controller or ",".join(current.controllers)
            ca_file = ca_file or current.ca or None
            if token_file is None and current.token_file:
                token_file = Path(current.token_file)
            if current.output:
                ctx.meta[DEFAULT_OUTPUT_KEY] = current.output
    controller = controller or DEFAULT_CONTROLLER
    if token_file is not None and not token:
        try:
            token = token_file.read_text().strip()
        except OSError as err:
            raise click.BadParameter(f"cannot read {token_file}: {err.strerror}",
                                     param_hint="'--token-file'") from err
    addresses = parse_addresses(controller)
    if not addresses:
        raise click.BadParameter("no address given", param_hint="'--controller'")
    ctx.obj = ControllerClient(addresses, connect_timeout=connect_timeout, insecure=insecure,
                               token=token, ca_file=ca_file)


def get_client(ctx: click.Context) -> ControllerClient:
    client = ctx.find_object(ControllerClient)
    if client is None:  # pragma: no cover - the group always sets it
        raise CliError("internal: no controller client in context")
    return client




def main() -> None:
    """Console-script entry point."""
    interrupt.install()
    try:
        cli(prog_name="viridian")
    except SystemExit as done:
        if interrupt.interrupted():
            interrupt.exit_now(done.code)
        raise
