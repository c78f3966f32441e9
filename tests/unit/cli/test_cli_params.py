"""Sizes, K=V pairs, durations, spec validation, error mapping."""

from __future__ import annotations

import click
import grpc
import pytest
from viridian.v1 import types_pb2

from controller.cli import errors
from controller.cli._spec import build_spec
from controller.cli.client import parse_addresses
from controller.cli.params import parse_duration, parse_key_value
from controller.cli.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("512Mi", 512 << 20), ("64Mi", 64 << 20), ("1.5Gi", 3 << 29),
     ("2Ti", 2 << 40), ("1Ki", 1024), ("512M", 512 << 20), ("2g", 2 << 30),
     ("1GB", 10**9), ("100MB", 10**8)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12Q", "", "Mi", "-1Mi", "1Mb", "1MiB"])
def test_parse_size_rejects_with_the_cli_wording(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_size(text)
    assert str(err.value) == (f"invalid size '{text}': use bytes, Ki/Mi/Gi/Ti (or K/M/G/T, "
                              "the same) or KB/MB/GB/TB (powers of 1000)")


def test_parse_size_rejects_part_of_a_byte() -> None:
    with pytest.raises(ValueError, match="not a whole number of bytes"):
        parse_size("1.5")


@pytest.mark.parametrize(("n", "text"), [(512 << 20, "512Mi"), (1000, "1000"), (8 << 30, "8Gi")])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize(
    ("text", "pair"), [("a=b", ("a", "b")), ("a=", ("a", "")), ("k=x=y", ("k", "x=y"))]
)
def test_key_value(text: str, pair: tuple[str, str]) -> None:
    assert parse_key_value(text) == pair


@pytest.mark.parametrize("text", ["novalue", "=v", ""])
def test_key_value_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="use KEY=VALUE"):
        parse_key_value(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("45", 45)]
)
def test_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1d", "h", "1h 2", "m30"])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_parse_addresses() -> None:
    assert parse_addresses(" a:1, b:2 ,,") == ["a:1", "b:2"]


def test_build_spec_defaults_and_fields() -> None:
    spec = build_spec(image="hello", env=[("A", "1")], labels=[("app", "x")],
                      node_selector=[("zone", "a")], anti_affinity="g", max_per_node=2,
                      strategy="spread", restart="on-failure", ha=True, args=["-v"])
    assert spec.vcpus == 1 and spec.memory_bytes == 64 << 20
    assert spec.desired_state == types_pb2.DESIRED_STATE_RUNNING
    assert spec.restart_policy == types_pb2.RESTART_POLICY_ON_FAILURE
    assert dict(spec.env) == {"A": "1"} and dict(spec.node_selector) == {"zone": "a"}
    assert (spec.anti_affinity_group, spec.max_per_node, spec.placement_strategy) == ("g", 2,
                                                                                     "spread")
    assert list(spec.args) == ["-v"] and spec.ha
    assert build_spec(image="x", start=False).desired_state == types_pb2.DESIRED_STATE_OFF


def test_max_per_node_needs_anti_affinity() -> None:
    with pytest.raises(click.UsageError, match="--max-per-node needs --anti-affinity"):
        build_spec(image="x", max_per_node=2)


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, "partition 'x' not found",
         "NOT_FOUND: partition 'x' not found"),
        (grpc.StatusCode.FAILED_PRECONDITION, "live migration is not supported",
         "FAILED_PRECONDITION: live migration is not supported"),
        (grpc.StatusCode.UNAVAILABLE, "connection reset",
         "cannot reach the controller at 10.0.0.1:50051: connection reset"),
        (grpc.StatusCode.INVALID_ARGUMENT, "", "INVALID_ARGUMENT"),
    ],
    ids=["not-found", "precondition", "unavailable", "no-details"],
)
def test_rpc_error_mapping(code: grpc.StatusCode, details: str, expected: str) -> None:
    assert errors.describe_rpc_error(FakeRpcError(code, details), "10.0.0.1:50051") == expected
