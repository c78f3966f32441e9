"""`viridian token create|ls|rm` (user tokens with roles) and `viridian node token create`
(join tokens for new nodes)."""

from __future__ import annotations

import datetime as dt

import click
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.cli.app import get_client
from controller.cli.nodes import node_group
from controller.cli.output import render_table
from controller.cli.params import DURATION

__all__ = ["COMMANDS"]

ROLES = {"admin": pb.ROLE_ADMIN, "operator": pb.ROLE_OPERATOR, "viewer": pb.ROLE_VIEWER}
ROLE_NAMES = {v: k for k, v in ROLES.items()} | {pb.ROLE_NODE_JOIN: "node-join"}


def _when(ts: object, present: bool) -> str:
    if not present:
        return "never"
    seconds = getattr(ts, "seconds", 0)
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _create(ctx: click.Context, role: pb.Role.ValueType, ttl: float | None,
            description: str) -> None:
    reply = get_client(ctx).stub.CreateToken(cpb.CreateTokenRequest(
        role=role, ttl_seconds=int(ttl or 0), description=description))
    click.echo(reply.secret)
    expires = _when(reply.token.expires_at, reply.token.HasField("expires_at"))
    click.echo(f"token {reply.token.id} ({ROLE_NAMES.get(role, '?')}) expires {expires}; "
               "the secret is shown only once", err=True)


@click.group("token")
def token_group() -> None:
    """Create, list and revoke API tokens (admin only)."""


@token_group.command("create")
@click.option("--role", type=click.Choice(sorted(ROLES)), required=True,
              help="admin: everything; operator: partitions, images, nodes; viewer: read only.")
@click.option("--ttl", type=DURATION, help="Lifetime, e.g. 24h (default: never expires).")
@click.option("--description", default="", help="What the token is for.")
@click.pass_context
def create_cmd(ctx: click.Context, role: str, ttl: float | None, description: str) -> None:
    """Create a token; prints ID.SECRET (use it with --token or VIRIDIAN_TOKEN)."""
    _create(ctx, ROLES[role], ttl, description)


@token_group.command("ls")
@click.pass_context
def ls_cmd(ctx: click.Context) -> None:
    """List tokens (never their secrets)."""
    reply = get_client(ctx).stub.ListTokens(cpb.ListTokensRequest())
    click.echo(render_table(
        ["ID", "ROLE", "EXPIRES", "CREATED BY", "DESCRIPTION"],
        ([t.id, ROLE_NAMES.get(t.role, "?"), _when(t.expires_at, t.HasField("expires_at")),
          t.created_by, t.description] for t in reply.tokens)))


@token_group.command("rm")
@click.argument("token_id", metavar="ID")
@click.pass_context
def rm_cmd(ctx: click.Context, token_id: str) -> None:
    """Revoke a token at once."""
    get_client(ctx).stub.DeleteToken(cpb.DeleteTokenRequest(id=token_id))
    click.echo(f"token {token_id} revoked")


@node_group.group("token")
def node_token_group() -> None:
    """Join tokens: let a new agent obtain its node certificate."""


@node_token_group.command("create")
@click.option("--ttl", type=DURATION, default=3600.0, show_default="1h",
              help="How long the token can be used to join.")
@click.pass_context
def node_token_create_cmd(ctx: click.Context, ttl: float) -> None:
    """Create a join token; give it to `viridian agent --join-token`."""
    _create(ctx, pb.ROLE_NODE_JOIN, ttl, "node join")


COMMANDS = [token_group]
