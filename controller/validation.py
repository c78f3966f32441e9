"""Checks on user input that the API refuses with INVALID_ARGUMENT."""

from __future__ import annotations

import re
from collections.abc import Mapping

from viridian.v1 import types_pb2 as pb

from controller.errors import InvalidArgument
from controller.scheduler.units import format_size

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MIN_MEMORY = 1 << 20
MAX_MEMORY = 64 << 30
MAX_VCPUS = 4
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]{0,62})$")
STRATEGIES = ("", "binpack", "spread")
MAX_ARGS_BYTES = 128 << 10
DEFAULT_MEMORY = 64 << 20


def check_name(kind: str, name: str) -> None:
    if not DNS_LABEL.match(name):
        raise InvalidArgument(
            f"invalid {kind} name {name!r}: must be a DNS label (lower-case letters, digits "
            "and '-', starting and ending with a letter or digit, at most 63 characters)"
        )


def check_labels(what: str, labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise InvalidArgument(f"invalid {what} key {key!r}")
        if len(value) > 63:
            raise InvalidArgument(f"{what} {key!r}: value longer than 63 characters")


def normalize_spec(spec: pb.PartitionSpec) -> None:
    """Fill defaults and refuse what no node could ever run. Mutates spec."""
    if not spec.image:
        raise InvalidArgument("an image is required")
    check_name("image", spec.image)
    if spec.vcpus == 0:
        spec.vcpus = 1
    if not 1 <= spec.vcpus <= MAX_VCPUS:
        raise InvalidArgument(f"vcpus must be between 1 and {MAX_VCPUS}, got {spec.vcpus}")
    if spec.memory_bytes == 0:
        spec.memory_bytes = DEFAULT_MEMORY
    if not MIN_MEMORY <= spec.memory_bytes <= MAX_MEMORY:
        raise InvalidArgument(
            f"memory must be between 1Mi and 64Gi, got {format_size(spec.memory_bytes)}"
        )
    if spec.memory_bytes % 4096:
        raise InvalidArgument("memory must be a multiple of 4Ki (the guest page size)")
    if spec.placement_strategy not in STRATEGIES:
        raise InvalidArgument(
            f"unknown placement strategy {spec.placement_strategy!r}: use binpack or spread"
        )
    if spec.max_per_node and not spec.anti_affinity_group:
        raise InvalidArgument("max_per_node needs an anti_affinity_group")
    if spec.anti_affinity_group:
        check_name("anti-affinity group", spec.anti_affinity_group)
    check_labels("label", spec.labels)
    check_labels("node selector", spec.node_selector)
    size = sum(len(a.encode()) + 1 for a in spec.args)
    size += sum(len(k.encode()) + len(v.encode()) + 2 for k, v in spec.env.items())
    if size > MAX_ARGS_BYTES:
        raise InvalidArgument("arguments and environment exceed 128Ki")
    for key in spec.env:
        if not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"invalid environment variable name {key!r}")
    if spec.restart_policy == pb.RESTART_POLICY_UNSPECIFIED:
        spec.restart_policy = pb.RESTART_POLICY_NEVER
    if spec.desired_state == pb.DESIRED_STATE_UNSPECIFIED:
        spec.desired_state = pb.DESIRED_STATE_RUNNING
