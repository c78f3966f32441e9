"""Server commands: `up` (embedded cluster), `controller`, `agent`, and `certs`.

These only parse options and hand over to the server code, imported inside each command so
that client commands never load it. (The `unused-ignore` lets the ignore outlive the day
those modules land.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import click

from controller.cli.app import get_client
from controller.cli.client import parse_addresses
from controller.cli.params import KEY_VALUE, SIZE

__all__ = ["COMMANDS", "default_data_dir"]

INSECURE_WARNING = ("warning: --insecure: plaintext and no authentication; anyone who "
                    "reaches the ports controls the cluster")


F = TypeVar("F", bound=Callable[..., object])
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_options(fn: F) -> F:
    """--log-format and --log-level (default: $VIRIDIAN_LOG, else info)."""
    fn = click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
                      default=None,
                      help="Least severe level logged (default: $VIRIDIAN_LOG, else info).")(fn)
    fn = click.option("--log-format", type=click.Choice(("text", "json")), default="text",
                      show_default=True,
                      help="Log lines as text, or as JSON objects with structured fields "
                      "(node, partition, epoch, request_id).")(fn)
    return fn


def checked_level(level: str | None) -> str:
    """The level to log at, or a one-line usage error (a bad $VIRIDIAN_LOG)."""
    from controller.logs import resolve_level

    try:
        return resolve_level(level)
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def metrics_option(fn: F) -> F:
    return click.option(
        "--metrics-listen", default="", metavar="HOST:PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (default: off; port 0: "
        "any free port).")(fn)


def check_listen(listen: str) -> None:
    """--metrics-listen is HOST:PORT (or empty: off)."""
    if not listen:
        return
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {listen[:80]!r}",
                                 param_hint="'--metrics-listen'")


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
              help="Address the controller serves the API on (agents use the next port).")
@click.option("--etcd-quota", type=SIZE, default="2Gi", show_default=True,
              help="Size etcd's database may reach before etcd refuses writes (NOSPACE).")
@click.option("--insecure", is_flag=True,
              help="No TLS, no authentication (development only).")
@click.option("--web-listen", default="", metavar="HOST:PORT",
              help="Where to serve the web console (default: 127.0.0.1, the API port + 2, "
              "or a free port if that one is taken; 'off': no web console).")
@click.option("--no-metrics", is_flag=True,
              help="Do not serve Prometheus metrics (by default every server does, on a free "
              "loopback port, and the URLs are printed).")
@log_options
def up_cmd(nodes: int, data_dir: Path | None, listen: str, etcd_quota: int,
           insecure: bool, web_listen: str, no_metrics: bool, log_format: str,
           log_level: str | None) -> None:
    """Run a whole cluster (etcd, a controller, N agents) in the foreground.

    It makes a cluster CA and every certificate it needs under the data dir, and saves
    admin credentials where the CLI finds them for the --listen address."""
    from controller.embedded import (  # type: ignore[import-not-found, unused-ignore]
        run_embedded_cluster,
    )

    level = checked_level(log_level)
    if insecure:
        click.echo(INSECURE_WARNING, err=True)
    sys.exit(run_embedded_cluster(nodes=nodes, data_dir=data_dir or default_data_dir(),
                                  listen=listen, insecure=insecure, etcd_quota=etcd_quota,
                                  web_listen=web_listen, metrics=not no_metrics,
                                  log_flags=("--log-format", log_format, "--log-level", level)))


@click.command("controller")
@click.option("--listen", required=True, help="Address to serve the API on, e.g. 0.0.0.0:50051.")
@click.option("--agent-listen", default="",
              help="Address to serve agents on (default: the --listen host, port + 1).")
@click.option("--etcd", "etcd", required=True, metavar="ENDPOINTS",
              help="Comma-separated etcd endpoints, e.g. https://127.0.0.1:2379 "
              "(https: mutual TLS with the --pki-dir certificate).")
@click.option("--lease-ttl", type=click.IntRange(min=1),
              help="Seconds a node (and the leader) lease lives without renewal "
              "(default: the controller's).")
@click.option("--max-heartbeats-per-second", "max_beats", type=click.FloatRange(min=1),
              default=2000, show_default=True,
              help="Agent heartbeats a second this replica aims to stay under: holding more "
              "sessions than that allows at TTL/6 apart, it asks agents to beat less often "
              "(never more than TTL/2 apart).")
@click.option("--prefix", help="etcd key prefix (default: the controller's, /viridian).")
@click.option("--advertise", default="",
              help="host:port other replicas reach this one at (default: the --listen address).")
@click.option("--pki-dir", type=click.Path(file_okay=False, path_type=Path),
              help="ca.pem, cert.pem, key.pem [, ca-key.pem to sign node joins, tokens to "
              "bootstrap] (see `viridian certs`).")
@click.option("--compact-every", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds between compactions of etcd's history by the leader; the newest "
              "period of history is kept (watches and paged lists that far behind still work).")
@click.option("--max-events", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Events kept at most (the leader deletes the oldest beyond; none is kept "
              "more than an hour).")
@click.option("--insecure", is_flag=True, help="Plaintext, no authentication.")
@click.option("--web-listen", default="", metavar="HOST:PORT",
              help="Serve the web console and its JSON API on this address (default: none). "
              "It takes the same tokens as the API; without TLS in front it is plain HTTP.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where this replica keeps image blobs (default: "
              "<data>/controller-<listen port>).")
@click.option("--blob-registry", default="", metavar="URL",
              help="Keep image blobs in this OCI registry (http[s]://host:port) instead of "
              "the data dir.")
@click.option("--blob-registry-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="CA certificate (PEM) the blob registry's TLS certificate is checked with.")
@click.option("--max-image-size", type=SIZE, default=None,
              help="Largest image a push may send (default 8Gi).")
@click.option("--image-gc-grace", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds image content must stay unreferenced before its blob is deleted "
              "(also covers a push between storing its bytes and writing its records).")
@metrics_option
@log_options
def controller_cmd(listen: str, agent_listen: str, etcd: str, lease_ttl: int | None,
                   max_beats: float, prefix: str | None, advertise: str, pki_dir: Path | None,
                   compact_every: float, max_events: int,
                   insecure: bool, web_listen: str, data_dir: Path | None, blob_registry: str,
                   blob_registry_ca: Path | None, max_image_size: int | None,
                   image_gc_grace: float, metrics_listen: str, log_format: str,
                   log_level: str | None) -> None:
    """Run a controller replica."""
    level = checked_level(log_level)
    check_listen(metrics_listen)
    endpoints = parse_addresses(etcd)
    if not endpoints:
        raise click.BadParameter("no endpoint given", param_hint="'--etcd'")
    web_host, _, web_port = web_listen.rpartition(":")
    if web_listen and (not web_host or not web_port.isdigit() or int(web_port) > 65535):
        raise click.BadParameter("expected HOST:PORT", param_hint="'--web-listen'")
    from controller.security.files import PkiDir
    from controller.security.tls import TlsError
    from controller.server import (  # type: ignore[import-not-found, unused-ignore]
        ControllerConfig,
        run_controller,
    )

    config = ControllerConfig(listen=listen, etcd_endpoints=endpoints,
                              agent_listen=agent_listen, advertise=advertise,
                              data_dir=data_dir or default_data_dir() /
                              f"controller-{listen.rsplit(':', 1)[-1]}",
                              blob_registry=blob_registry, blob_registry_ca=blob_registry_ca,
                              compact_every=compact_every, max_events=max_events,
                              web_listen=web_listen, metrics_listen=metrics_listen)
    if blob_registry and not blob_registry.startswith(("http://", "https://")):
        raise click.BadParameter("expected http://HOST:PORT or https://HOST:PORT",
                                 param_hint="'--blob-registry'")
    if max_image_size is not None:
        config.max_image_bytes = max_image_size
    config.image_gc_grace_s = image_gc_grace
    if lease_ttl is not None:
        config.lease_ttl = lease_ttl
    config.max_heartbeats_per_s = max_beats
    if prefix is not None:
        config.prefix = prefix
    if insecure:
        if log_format == "text":   # JSON logs: the server logs it as a JSON line
            click.echo(INSECURE_WARNING, err=True)
    elif pki_dir is None:
        raise click.UsageError("--pki-dir is required (or --insecure for plaintext)")
    else:
        pki = PkiDir(pki_dir)
        try:
            config.tls = pki.tls()
            config.ca = pki.ca_keypair()
            config.bootstrap_tokens = pki.bootstrap_tokens()
        except (TlsError, OSError) as err:
            raise click.ClickException(str(err)) from err
    if any(e.startswith("https://") for e in endpoints):
        if config.tls is None:
            raise click.UsageError("https etcd endpoints need --pki-dir")
        config.etcd_tls = config.tls
    sys.exit(run_controller(config, log_format, level))


@click.command("agent")
@click.option("--controller", "controllers", metavar="ADDR[,ADDR…]",
              help="Controllers' agent-port addresses (default: the global --controller).")
@click.option("--name", required=True, help="Node name.")
@click.option("--vcpus", type=click.IntRange(min=1), help="vCPUs offered (default: host CPUs).")
@click.option("--memory", type=SIZE, help="Memory offered, e.g. 8Gi (default: host memory).")
@click.option("--label", "labels", type=KEY_VALUE, multiple=True, metavar="K=V",
              help="Node label (repeatable).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where partitions' workers keep their files (default: <data>/agents/NAME).")
@click.option("--address", default="",
              help="host:port other nodes reach this agent's saved-state port at (default: "
              "the --state-listen address, unless it is a wildcard).")
@click.option("--state-listen", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="Where to serve saved states to other nodes (port 0: any free port).")
@click.option("--pki-dir", type=click.Path(file_okay=False, path_type=Path),
              help="ca.pem plus this node's cert.pem/key.pem (written there by a join) "
              "(default: <run-dir>/pki).")
@click.option("--join-token", envvar="VIRIDIAN_JOIN_TOKEN", metavar="ID.SECRET",
              help="Join token (`viridian node token create`), used when the PKI dir has no "
              "certificate yet. Env: VIRIDIAN_JOIN_TOKEN.")
@click.option("--join", "join_addresses", metavar="ADDR[,ADDR…]",
              help="Controllers' API addresses to join through (needed with --join-token).")
@click.option("--insecure", is_flag=True, help="Plaintext, no node certificate.")
@click.option("--image-cache-size", "image_cache", type=SIZE, default="20Gi", show_default=True,
              help="Disk for unpacked images; the least recently used ones no partition here "
              "uses are evicted beyond it.")
@metrics_option
@log_options
@click.pass_context
def agent_cmd(ctx: click.Context, controllers: str | None, name: str, vcpus: int | None,
              memory: int | None, labels: Sequence[tuple[str, str]], run_dir: Path | None,
              address: str, state_listen: str, pki_dir: Path | None, join_token: str | None,
              join_addresses: str | None, insecure: bool, image_cache: int,
              metrics_listen: str, log_format: str, log_level: str | None) -> None:
    """Run a node agent."""
    level = checked_level(log_level)
    check_listen(metrics_listen)
    if image_cache <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--image-cache-size")
    addresses = parse_addresses(controllers) if controllers else get_client(ctx).addresses
    from controller.security.files import PkiDir
    from controller.security.tls import TlsError
    from node_agent.agent import (  # type: ignore[import-not-found, unused-ignore]
        AgentConfig,
        run_agent,
    )
    from node_agent.join import JoinError, join

    run_dir = run_dir or default_data_dir() / "agents" / name
    config = AgentConfig(controllers=addresses, name=name, vcpus=vcpus, memory_bytes=memory,
                         labels=dict(labels), run_dir=run_dir, state_listen=state_listen,
                         image_cache_bytes=image_cache, metrics_listen=metrics_listen)
    if address:
        config.address = address
    if insecure:
        if log_format == "text":   # JSON logs: the agent logs it as a JSON line
            click.echo(INSECURE_WARNING, err=True)
    else:
        pki = PkiDir(pki_dir or run_dir / "pki")
        try:
            if not pki.has_identity():
                if not join_token or not join_addresses:
                    raise click.UsageError(
                        f"no node certificate in {pki.path}: pass --join-token and --join "
                        "(or --insecure for a plaintext cluster)")
                join(pki, name, parse_addresses(join_addresses), join_token)
            config.tls = pki.tls()
        except (JoinError, TlsError) as err:
            raise click.ClickException(str(err)) from err
    sys.exit(run_agent(config, log_format, level))


@click.command("certs")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Directory to write the cluster CA and certificates to.")
@click.option("--controller", "controllers", multiple=True, metavar="NAME[=HOST,…]",
              help="A controller and the host names it is reached at (repeatable).")
@click.option("--etcd", "etcds", multiple=True, metavar="NAME[=HOST,…]",
              help="An etcd member and its host names (repeatable).")
@click.option("--node", "nodes", multiple=True, metavar="NAME",
              help="A node to certify now instead of joining later (repeatable).")
def certs_cmd(out_dir: Path, controllers: Sequence[str], etcds: Sequence[str],
              nodes: Sequence[str]) -> None:
    """Make a cluster CA and the certificates of its controllers, etcd members and nodes.

    Writes one PKI directory per component under --out (mount each where it runs), plus
    admin/ (the CA and an admin token for the CLI). Existing files are kept, so running it
    again adds components without changing the CA."""
    from controller.security.files import ClusterPki

    pki = ClusterPki(out_dir)
    admin, token = pki.admin()
    for spec in controllers:
        name, _, hosts = spec.partition("=")
        ctl = pki.controller(name, parse_addresses(hosts))
        pki.write_bootstrap(ctl, [(token, "admin")])
        click.echo(f"controller {name}: {ctl.path}")
    for spec in etcds:
        name, _, hosts = spec.partition("=")
        click.echo(f"etcd {name}: {pki.etcd(name, parse_addresses(hosts)).path}")
    for name in nodes:
        click.echo(f"node {name}: {pki.node(name).path}")
    click.echo(f"admin: {admin.path} (viridian --ca {admin.ca} --token $(cat {admin.path}/token))")


COMMANDS = [up_cmd, controller_cmd, agent_cmd, certs_cmd]
