"""Where the CLI finds credentials for a cluster.

In order: --insecure (plaintext); --ca/--token (or VIRIDIAN_CA / VIRIDIAN_TOKEN); else the
entry `viridian up` (or `viridian login`-style tooling) left for the address in the config
directory ($VIRIDIAN_CONFIG_DIR, else $XDG_CONFIG_HOME/viridian, else ~/.config/viridian):
clusters/HOST_PORT.json, holding the cluster CA and a token, readable by its owner only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from controller.cli.errors import CliError

__all__ = ["Credentials", "config_dir", "forget_cluster", "lookup", "save_cluster"]


def config_dir() -> Path:
    explicit = os.environ.get("VIRIDIAN_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "viridian"
    return Path.home() / ".config" / "viridian"


def _entry(address: str) -> Path:
    return config_dir() / "clusters" / (re.sub(r"[^A-Za-z0-9.-]", "_", address) + ".json")


@dataclass(frozen=True)
class Credentials:
    ca_pem: bytes
    token: str


def save_cluster(address: str, ca_pem: bytes, token: str) -> Path:
    path = _entry(address)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"address": address, "ca": ca_pem.decode(), "token": token}, out)
    os.replace(tmp, path)
    return path


def forget_cluster(address: str) -> None:
    try:
        _entry(address).unlink()
    except FileNotFoundError:
        pass


def _saved(address: str) -> Credentials | None:
    path = _entry(address)
    try:
        data = json.loads(path.read_text())
        return Credentials(str(data["ca"]).encode(), str(data.get("token", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CliError(f"unreadable credentials in {path}: {err}") from err


def lookup(addresses: list[str], ca_file: str | None, token: str | None) -> Credentials:
    """Credentials for the first address that has any; flags and env override the files."""
    saved = next((c for c in map(_saved, addresses) if c is not None), None)
    if ca_file:
        try:
            ca_pem = Path(ca_file).read_bytes()
        except OSError as err:
            raise CliError(f"cannot read the CA certificate {ca_file}: {err.strerror}") from err
    elif saved is not None:
        ca_pem = saved.ca_pem
    else:
        where = ", ".join(addresses)
        raise CliError(
            f"no credentials for {where}: pass --ca and --token (or set VIRIDIAN_CA and "
            "VIRIDIAN_TOKEN), start the cluster here with `viridian up`, or use --insecure "
            "for a plaintext cluster")
    return Credentials(ca_pem, token or (saved.token if saved else ""))
