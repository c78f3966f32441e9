"""The channel to the controller: address list with failover, and the typed stub.

Addresses are tried in order with a health check; the first server that answers is used.
Channels are TLS pinned to the cluster CA (the controller role name is checked, not the
address: see controller.security.pki), with the token sent as a bearer credential; plaintext
only with --insecure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import click
import grpc
from viridian.v1 import controller_pb2_grpc

from controller.cli.credentials import lookup
from controller.cli.errors import CliError, ConnectError
from controller.cli.interrupt import abandon, interrupted
from controller.security.tls import controller_options, token_credentials

__all__ = [
    "DEFAULT_CONTROLLER",
    "ChannelOptions",
    "ControllerClient",
    "paged",
    "parse_addresses",
    "probe",
]

DEFAULT_CONTROLLER = "127.0.0.1:50051"


def parse_addresses(text: str) -> list[str]:
    """"a:1, b:2" -> ["a:1", "b:2"]; empty entries are dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class ChannelOptions:
    """How to open a channel; `credentials` None means plaintext (loopback / development)."""

    connect_timeout: float = 5.0
    credentials: grpc.ChannelCredentials | None = None
    options: tuple[tuple[str, int | str], ...] = (
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    )

    def open(self, address: str) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(address, self.credentials,
                                       options=controller_options(self.options))
        return grpc.insecure_channel(address, options=list(self.options))


# The standard health service every Viridian server registers. Any answer proves the server
# is there -- even UNIMPLEMENTED from a server without it -- and a refused connection fails
# at once with the reason, which a connectivity subscription would not tell us.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_NOT_SERVING = b"\x08\x02"  # HealthCheckResponse{status: NOT_SERVING}


def probe(channel: grpc.Channel, timeout: float) -> str | None:
    """Return None if a server answers on `channel`, or why not ("connection refused")."""
    check = channel.unary_unary(_HEALTH_CHECK, request_serializer=None,
                                response_deserializer=None)
    try:
        reply = check(b"", timeout=timeout)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else None
        if code == grpc.StatusCode.UNAVAILABLE:
            details = (err.details() if isinstance(err, grpc.Call) else "") or "unavailable"
            if "handshake failed" in details.lower():
                # gRPC's own text ends in OpenSSL's last status, often a bare "OK".
                return ("TLS handshake failed: the server's certificate is not signed by the "
                        "CA in use, or the server does not speak TLS (a plaintext cluster "
                        "needs --insecure)")
            if "last error:" in details:  # "failed to connect …: Connection refused"
                details = details.rsplit(": ", 1)[-1]
            return details
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer within {timeout:g}s"
        return None  # it answered, if only to say it has no health service
    if reply == _NOT_SERVING:
        return "not serving"
    return None


@dataclass
class ControllerClient:
    """Lazily connected client: `client.stub` picks the first address that answers."""

    addresses: list[str]
    connect_timeout: float = 5.0
    insecure: bool = False
    token: str | None = None
    ca_file: str | None = None
    _channel: grpc.Channel | None = None
    _stub: controller_pb2_grpc.ControllerStub | None = None
    address: str | None = None

    @property
    def stub(self) -> controller_pb2_grpc.ControllerStub:
        if self._stub is None:
            self._connect()
        assert self._stub is not None
        return self._stub

    def channel_options(self) -> ChannelOptions:
        """Plaintext with --insecure (after a warning), else TLS with the found credentials."""
        if self.insecure:
            click.echo("warning: --insecure: plaintext, no credentials", err=True)
            return ChannelOptions(connect_timeout=self.connect_timeout)
        found = lookup(self.addresses, self.ca_file, self.token)
        return ChannelOptions(connect_timeout=self.connect_timeout,
                              credentials=token_credentials(found.ca_pem, found.token))

    def _connect(self) -> None:
        problems: list[str] = []
        options = self.channel_options()
        for address in self.addresses:
            channel = options.open(address)
            why = probe(channel, options.connect_timeout)
            if why is None:
                self._channel, self.address = channel, address
                self._stub = controller_pb2_grpc.ControllerStub(channel)
                return
            channel.close()
            problems.append(f"{address}: {why}" if len(self.addresses) > 1 else why)
        where = ", ".join(self.addresses) or "(no address)"
        raise ConnectError(f"cannot reach the controller at {where}: {'; '.join(problems)}")

    def close(self) -> None:
        if self._channel is not None:
            if interrupted():   # close() can hang after Ctrl-C: see interrupt.py
                abandon(self._channel)
            else:
                self._channel.close()
            self._channel, self._stub = None, None


def cancel(call: object) -> None:
    """Cancel a streaming call (grpc-stubs leaves `cancel` untyped)."""
    method = getattr(call, "cancel", None)
    if callable(method):
        method()


class _Paged(Protocol):
    @property
    def next_page_token(self) -> str: ...


R = TypeVar("R", bound=_Paged)
T = TypeVar("T")


def paged(fetch: Callable[[str], R], items: Callable[[R], Sequence[T]]) -> Iterator[T]:
    """Every item of a paged list, page after page as they arrive: fetch(page_token) from
    "" until a reply's next_page_token is "" (the server reads every page at the revision
    of the first, so together they are one consistent list)."""
    token = ""
    seen: set[str] = set()
    while True:
        reply = fetch(token)
        yield from items(reply)
        token = reply.next_page_token
        if not token:
            return
        if token in seen:
            raise CliError("the controller sent the same page token twice; list again")
        seen.add(token)
