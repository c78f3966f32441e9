"""Errors the CLI reports: one line on stderr, exit code 1.

    CliError            something went wrong that the user should read (file missing, timeout…)
    └── ConnectError    no controller address answered

gRPC errors are not wrapped where they happen: `describe_rpc_error` turns them into the same one
line at the edge (app.ViridianGroup.invoke).
"""

from __future__ import annotations

import grpc

__all__ = ["CliError", "ConnectError", "describe_rpc_error"]


class CliError(Exception):
    """An error with a message meant for the user; the CLI prints it and exits 1."""

    exit_code = 1


class ConnectError(CliError):
    """None of the controller addresses answered."""


def describe_rpc_error(err: grpc.RpcError, address: str | None = None) -> str:
    """One line for a failed RPC: "NOT_FOUND: partition 'x' not found"."""
    code: grpc.StatusCode | None = None
    details = ""
    if isinstance(err, grpc.Call):
        code = err.code()
        details = err.details() or ""
    if code is None:
        return str(err) or "RPC failed"
    if code == grpc.StatusCode.UNAVAILABLE:
        where = address or "the configured address"
        return f"cannot reach the controller at {where}: {details or 'unavailable'}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"DEADLINE_EXCEEDED: {details or 'the controller did not answer in time'}"
    return f"{code.name}: {details}" if details else code.name
