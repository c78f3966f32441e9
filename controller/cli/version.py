"""`viridian version`: the client's version, the controller's and every agent's."""

from __future__ import annotations

from typing import Any

import click
import grpc
from viridian.v1 import controller_pb2

from controller.cli.app import get_client
from controller.cli.client import paged
from controller.cli.output import dump, render_table, terminal_text
from controller.version import API_VERSION, VERSION

__all__ = ["COMMANDS"]


@click.command("version")
@click.option("--client", "client_only", is_flag=True,
              help="Only the client's version (no controller needed).")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True, help="Output format.")
@click.pass_context
def version_cmd(ctx: click.Context, client_only: bool, output: str) -> None:
    """Print the client's, the controller's and the agents' versions."""
    data: dict[str, Any] = {"client": {"version": VERSION, "api_version": API_VERSION}}
    if not client_only:
        client = get_client(ctx)
        stub = client.stub
        try:
            reply = stub.GetVersion(controller_pb2.GetVersionRequest())
            data["controller"] = {"version": reply.version, "api_version": reply.api_version,
                                  "address": client.address or ""}
        except grpc.RpcError as err:
            if not (isinstance(err, grpc.Call)
                    and err.code() == grpc.StatusCode.UNIMPLEMENTED):
                raise
            data["controller"] = {"version": "", "api_version": "",
                                  "address": client.address or ""}
        nodes = paged(lambda token: stub.ListNodes(
            controller_pb2.ListNodesRequest(page_token=token)), lambda r: r.nodes)
        data["agents"] = {n.name: n.spec.agent_version for n in nodes}
    if output != "table":
        click.echo(dump(data, output))
        return
    click.echo(f"Client:      {VERSION} (API {API_VERSION})")
    if client_only:
        return
    controller = data["controller"]
    shown = (f"{terminal_text(controller['version'])} (API "
             f"{terminal_text(controller['api_version'])})" if controller["version"]
             else "unknown (it does not answer GetVersion: older than the client)")
    click.echo(f"Controller:  {shown} at {controller['address']}")
    agents = data["agents"]
    if not agents:
        click.echo("Agents:      none registered")
        return
    click.echo("Agents:")
    rows = [(name, version or "unknown") for name, version in sorted(agents.items())]
    table = render_table(["NODE", "VERSION"], rows)
    click.echo("\n".join("  " + line for line in table.splitlines()))
    if any(v and v != VERSION for v in agents.values()) or (
            controller["version"] and controller["version"] != VERSION):
        click.echo("note: versions differ from the client's", err=True)


COMMANDS = [version_cmd]
