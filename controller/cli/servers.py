"""Server commands: `up` (embedded cluster), `controller`, `agent`.

These only parse options and hand over to the server code, imported inside each command so
that client commands never load it. (The `unused-ignore` lets the ignore outlive the day
those modules land.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from controller.cli.app import get_client
from controller.cli.client import parse_addresses
from controller.cli.params import KEY_VALUE, SIZE

__all__ = ["COMMANDS", "default_data_dir"]


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/viridian or ~/.local/share/viridian; ./.viridian without a home."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "viridian"
    home = os.environ.get("HOME")
    if home and Path(home).is_dir():
        return Path(home) / ".local" / "share" / "viridian"
    return Path.cwd() / ".viridian"


@click.command("up")
@click.option("--nodes", type=click.IntRange(min=1), default=2, show_default=True,
              help="Number of node agents to start.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where etcd and the agents keep their state "
              "(default: ~/.local/share/viridian, or ./.viridian).")
@click.option("--listen", default="127.0.0.1:50051", show_default=True,
              help="Address the controller serves the API on.")
def up_cmd(nodes: int, data_dir: Path | None, listen: str) -> None:
    """Run a whole cluster (etcd, a controller, N agents) in the foreground."""
    from controller.embedded import (  # type: ignore[import-not-found, unused-ignore]
        run_embedded_cluster,
    )

    sys.exit(run_embedded_cluster(nodes=nodes, data_dir=data_dir or default_data_dir(),
                                  listen=listen))


@click.command("controller")
@click.option("--listen", required=True, help="Address to serve the API on, e.g. 0.0.0.0:50051.")
@click.option("--etcd", "etcd", required=True, metavar="ENDPOINTS",
              help="Comma-separated etcd endpoints, e.g. 127.0.0.1:2379.")
@click.option("--lease-ttl", type=click.IntRange(min=1),
              help="Seconds a node (and the leader) lease lives without renewal "
              "(default: the controller's).")
@click.option("--prefix", help="etcd key prefix (default: the controller's, /viridian).")
@click.option("--advertise", default="",
              help="host:port other replicas reach this one at (default: the --listen address).")
def controller_cmd(listen: str, etcd: str, lease_ttl: int | None, prefix: str | None,
                   advertise: str) -> None:
    """Run a controller replica."""
    endpoints = parse_addresses(etcd)
    if not endpoints:
        raise click.BadParameter("no endpoint given", param_hint="'--etcd'")
    from controller.server import run_controller  # type: ignore[import-not-found, unused-ignore]

    # Unset options are left out so that the server's own defaults apply.
    extra: dict[str, Any] = {}
    if lease_ttl is not None:
        extra["lease_ttl"] = lease_ttl
    if prefix is not None:
        extra["prefix"] = prefix
    if advertise:
        extra["advertise"] = advertise
    sys.exit(run_controller(listen=listen, etcd_endpoints=endpoints, **extra))


@click.command("agent")
@click.option("--controller", "controllers", metavar="ADDR[,ADDR…]",
              help="Controller addresses (default: the global --controller).")
@click.option("--name", required=True, help="Node name.")
@click.option("--vcpus", type=click.IntRange(min=1), help="vCPUs offered (default: host CPUs).")
@click.option("--memory", type=SIZE, help="Memory offered, e.g. 8Gi (default: host memory).")
@click.option("--label", "labels", type=KEY_VALUE, multiple=True, metavar="K=V",
              help="Node label (repeatable).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where partitions' workers keep their files (default: <data>/agents/NAME).")
@click.option("--address", default="", help="host:port the agent can be reached at.")
@click.pass_context
def agent_cmd(ctx: click.Context, controllers: str | None, name: str, vcpus: int | None,
              memory: int | None, labels: Sequence[tuple[str, str]], run_dir: Path | None,
              address: str) -> None:
    """Run a node agent."""
    addresses = parse_addresses(controllers) if controllers else get_client(ctx).addresses
    from node_agent.agent import (  # type: ignore[import-not-found, unused-ignore]
        AgentConfig,
        run_agent,
    )

    config = AgentConfig(
        controllers=addresses,
        name=name,
        vcpus=vcpus,
        memory_bytes=memory,
        labels=dict(labels),
        run_dir=run_dir or default_data_dir() / "agents" / name,
    )
    if address:
        config.address = address
    sys.exit(run_agent(config))


COMMANDS = [up_cmd, controller_cmd, agent_cmd]
