"""Contexts: named clusters in the CLI's config file, as kubectl's kubeconfig contexts.

The file is config.yaml in the config directory (credentials.config_dir(): $VIRIDIAN_CONFIG_DIR,
else $XDG_CONFIG_HOME/viridian, else ~/.config/viridian):

    current-context: prod
    contexts:
      prod:
        controllers: [10.0.0.1:50051, 10.0.0.2:50051]
        ca: /etc/viridian/ca.pem          # optional
        token-file: ~/.viridian-token     # optional
        output: wide                      # optional default for -o

The global options fall back to the current context (or the one --context names): a flag
or its environment variable wins, then the context, then the built-in default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from controller.cli.client import parse_addresses
from controller.cli.credentials import config_dir
from controller.cli.errors import CliError
from controller.cli.output import FORMATS, render_table

__all__ = ["COMMANDS", "Context", "Config", "config_path", "load_config", "save_config"]

MAX_CONFIG_BYTES = 1 << 20


@dataclass
class Context:
    controllers: list[str]
    ca: str = ""
    token_file: str = ""
    output: str = ""

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"controllers": list(self.controllers)}
        for key, value in (("ca", self.ca), ("token-file", self.token_file),
                           ("output", self.output)):
            if value:
                out[key] = value
        return out


@dataclass
class Config:
    current: str = ""
    contexts: dict[str, Context] = field(default_factory=dict)

    def context(self, name: str | None) -> tuple[str, Context] | None:
        """The context `name` (CliError if there is none), or the current one, or None."""
        chosen = name or self.current
        if not chosen:
            return None
        found = self.contexts.get(chosen)
        if found is None:
            where = "--context" if name else f"current-context in {config_path()}"
            raise CliError(f"no context {chosen!r} ({where}); "
                           f"known: {', '.join(sorted(self.contexts)) or 'none'}")
        return chosen, found


def config_path() -> Path:
    return config_dir() / "config.yaml"


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CliError(f"{config_path()}: {what} must be a string")
    return value


def _context(name: str, data: Any) -> Context:
    where = f"context {name!r}"
    if not isinstance(data, dict):
        raise CliError(f"{config_path()}: {where} must be a mapping")
    unknown = set(data) - {"controllers", "ca", "token-file", "output"}
    if unknown:
        raise CliError(f"{config_path()}: {where}: unknown key {sorted(unknown)[0]!r}")
    raw = data.get("controllers")
    if isinstance(raw, str):
        controllers = parse_addresses(raw)
    elif isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        controllers = [a.strip() for a in raw if a.strip()]
    else:
        raise CliError(f"{config_path()}: {where}: controllers must be a list of addresses")
    if not controllers:
        raise CliError(f"{config_path()}: {where}: no controller address")
    output = _text(data.get("output"), f"{where}: output")
    if output and output not in FORMATS:
        raise CliError(f"{config_path()}: {where}: output must be one of {', '.join(FORMATS)}")
    return Context(controllers, _text(data.get("ca"), f"{where}: ca"),
                   _text(data.get("token-file"), f"{where}: token-file"), output)


def load_config() -> Config:
    """The config file as it is (an empty Config when there is none)."""
    path = config_path()
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return Config()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise CliError(f"{path}: larger than 1Mi")
    try:
        data = yaml.safe_load(raw.decode()) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise CliError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a mapping with contexts")
    contexts = data.get("contexts") or {}
    if not isinstance(contexts, dict):
        raise CliError(f"{path}: contexts must be a mapping of name to context")
    return Config(_text(data.get("current-context"), "current-context"),
                  {str(name): _context(str(name), value) for name, value in contexts.items()})


def save_config(config: Config) -> Path:
    """Write the file atomically, readable by its owner only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data: dict[str, Any] = {}
    if config.current:
        data["current-context"] = config.current
    data["contexts"] = {name: ctx.data() for name, ctx in sorted(config.contexts.items())}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(data, out, sort_keys=False, default_flow_style=False)
    os.replace(tmp, path)
    return path


# ---- commands -----------------------------------------------------------------------------


@click.group("config")
def config_group() -> None:
    """Contexts: named clusters (controllers, CA, token file, default output)."""


@config_group.command("get-contexts")
def get_contexts_cmd() -> None:
    """List the contexts; * marks the current one."""
    config = load_config()
    rows = [("*" if name == config.current else "", name, ",".join(c.controllers),
             c.output or "-") for name, c in sorted(config.contexts.items())]
    if not rows:
        click.echo(f"no contexts in {config_path()} (add one with `viridian config "
                   "set-context NAME --controller ADDR`)")
        return
    click.echo(render_table(["CURRENT", "NAME", "CONTROLLERS", "OUTPUT"], rows))


@config_group.command("current-context")
def current_context_cmd() -> None:
    """Print the current context's name."""
    config = load_config()
    if not config.current:
        raise CliError("no current context (viridian config use-context NAME)")
    click.echo(config.current)


@config_group.command("use-context")
@click.argument("name")
def use_context_cmd(name: str) -> None:
    """Make NAME the current context."""
    config = load_config()
    if name not in config.contexts:
        raise CliError(f"no context {name!r}; known: "
                       f"{', '.join(sorted(config.contexts)) or 'none'}")
    config.current = name
    save_config(config)
    click.echo(f"switched to context {name}")


def _absolute(path: str | None) -> str | None:
    return None if path is None else ("" if not path else str(Path(path).expanduser().resolve()))


@config_group.command("set-context")
@click.argument("name")
@click.option("--controller", "controller", metavar="ADDR[,ADDR…]",
              help="Controller addresses (required for a new context).")
@click.option("--ca", metavar="FILE", help="The cluster CA certificate ('' to unset).")
@click.option("--token-file", "token_file", metavar="FILE",
              help="File holding the token ('' to unset).")
@click.option("-o", "--output", type=click.Choice([*FORMATS, ""]),
              help="Default output format for this context ('' to unset).")
@click.option("--use", is_flag=True, help="Also make it the current context.")
def set_context_cmd(name: str, controller: str | None, ca: str | None,
                    token_file: str | None, output: str | None, use: bool) -> None:
    """Create context NAME, or change the fields given of an existing one."""
    if not name.strip() or any(ch.isspace() for ch in name):
        raise click.BadParameter("a context name is one word", param_hint="'NAME'")
    config = load_config()
    existing = config.contexts.get(name)
    addresses = parse_addresses(controller) if controller is not None else None
    if controller is not None and not addresses:
        raise click.BadParameter("no address given", param_hint="'--controller'")
    if existing is None:
        if addresses is None:
            raise click.UsageError(f"context {name!r} is new: give --controller")
        existing = Context(addresses)
    elif addresses is not None:
        existing.controllers = addresses
    ca_path, token_path = _absolute(ca), _absolute(token_file)
    if ca_path is not None:
        existing.ca = ca_path
    if token_path is not None:
        existing.token_file = token_path
    if output is not None:
        existing.output = output
    config.contexts[name] = existing
    if use or not config.current:
        config.current = name
    path = save_config(config)
    click.echo(f"context {name} saved in {path}"
               + (" (current)" if config.current == name else ""))


@config_group.command("delete-context")
@click.argument("name")
def delete_context_cmd(name: str) -> None:
    """Remove context NAME."""
    config = load_config()
    if config.contexts.pop(name, None) is None:
        raise CliError(f"no context {name!r}")
    if config.current == name:
        config.current = ""
    save_config(config)
    click.echo(f"context {name} deleted")


COMMANDS = [config_group]
