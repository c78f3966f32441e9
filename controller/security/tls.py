"""TLS material for one process, and opening channels to controllers with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from controller.security.names import CONTROLLER_NAME, node_server_name

__all__ = ["Dialer", "TlsConfig", "TlsError", "controller_options", "token_credentials"]


class TlsError(ValueError):
    """Certificate files that are missing or unreadable (one line, for the CLI)."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TlsError(f"cannot read the {what} {path}: {err.strerror}") from err
    if b"-----BEGIN" not in data:
        raise TlsError(f"the {what} {path} is not PEM")
    return data


@dataclass(frozen=True)
class TlsConfig:
    """The cluster CA to trust, and this process's own certificate and key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def from_files(cls, ca: Path, cert: Path, key: Path) -> TlsConfig:
        return cls(_read(ca, "CA certificate"), _read(cert, "certificate"),
                   _read(key, "private key"))

    def server_credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem,
            require_client_auth=require_client_cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Mutual TLS: present our certificate, trust only the cluster CA."""
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)


def controller_options(options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Channel options that check the controller role name instead of the dialled address
    (see controller.security.pki)."""
    return [*options, ("grpc.ssl_target_name_override", CONTROLLER_NAME)]


def token_credentials(ca_pem: bytes, token: str) -> grpc.ChannelCredentials:
    """TLS pinned to the cluster CA, plus `token` as a bearer credential on every call (when
    there is one): what users and joining agents present on the API port."""
    channel = grpc.ssl_channel_credentials(ca_pem)
    if not token:
        return channel
    return grpc.composite_channel_credentials(
        channel, grpc.access_token_call_credentials(token))


class Dialer:
    """Opens channels to controllers: mutual TLS with `tls`, plaintext without."""

    def __init__(self, tls: TlsConfig | None) -> None:
        self.tls = tls

    def aio_channel(self, address: str,
                    options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=list(options))
        return grpc.aio.secure_channel(address, self.tls.channel_credentials(),
                                       options=controller_options(options))

    def node_channel(self, address: str, node: str,
                     options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A channel to node `node`'s StateSource at `address`: its certificate must name
        that node (node_server_name), whatever the address."""
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=list(options))
        return grpc.aio.secure_channel(
            address, self.tls.channel_credentials(),
            options=[*options, ("grpc.ssl_target_name_override", node_server_name(node))])
