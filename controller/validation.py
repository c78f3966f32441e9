"""What the controller accepts from users (the public API) and from agents (registration);
the rest is refused with INVALID_ARGUMENT and a one-line message that shows the offending
value escaped (repr) and cut short, never raw.

Every string here ends up in etcd, in a guest or on an operator's terminal, so the limits
follow the systems that already settled them (docs/lifecycle.md, "Input limits"):

- Names (partitions, images, checkpoints, anti-affinity groups, nodes): DNS-1123 labels,
  at most 63 of [a-z0-9-], starting and ending with a letter or digit.
- Labels, node selectors, node labels (Kubernetes' label rules): at most 64 per object; a
  key is an optional prefix (a DNS-1123 subdomain of at most 253 characters) and "/", then a
  name of at most 63 characters of [A-Za-z0-9-_.] starting and ending with a letter or digit;
  a value is empty or such a name. No control characters can pass.
- Arguments and environment (execve's rules): any character but NUL, an environment name
  also no "=" and not empty. At most 4096 strings and 128 KiB together (each string counted
  with its NUL, an environment entry as NAME=VALUE): Linux's classic ARG_MAX of 32 pages,
  well under the 2 MiB a guest stack leaves for them today.
- A tar image's entrypoint: at most PATH_MAX (4096) bytes, each component at most NAME_MAX
  (255), no control characters. An announced digest is "sha256:" and 64 lower-case hex digits.
- An image reference: NAME, NAME:TAG or NAME@sha256:HEX; NAME a DNS-1123 label, TAG at
  most 128 of [A-Za-z0-9_.-] not starting with "." or "-" (Docker's tag grammar).
- A partition's disk: 0 (the default, 1 GiB) or 1 MiB..1 TiB.
- A stop's grace (Shut Down): finite, 0..3600 s; unset means 10 s; not with force.
- A node's declaration: 1..4096 vCPUs, 1 MiB..64 TiB of memory, allocation ratios finite and
  in (0, 64] or 0 (= the default), known architectures, an address "" or HOST:PORT (a DNS
  name, an IPv4 address or a bracketed IPv6 one; port 1..65535), a version and host
  architecture that are short printable tokens.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence

from viridian.v1 import types_pb2 as pb

from controller.errors import InvalidArgument
from controller.partitions.events import DEFAULT_STOP_GRACE_S, MAX_STOP_GRACE_S
from controller.safe_text import has_controls
from controller.scheduler.units import format_size

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
HOSTNAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*")
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # Docker's tag grammar
PORT = re.compile(r"[0-9]{1,5}")
VERSION = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.+~]{0,63}")
HOST_ARCH = re.compile(r"[A-Za-z0-9_]{1,32}")

MIN_MEMORY = 1 << 20
MAX_MEMORY = 64 << 30
MAX_VCPUS = 4
DEFAULT_MEMORY = 64 << 20
STRATEGIES = ("", "binpack", "spread")
MAX_LABELS = 64
MAX_LABEL_NAME = 63
MAX_LABEL_PREFIX = 253
MAX_ARGS_BYTES = 128 << 10
MAX_ARG_ITEMS = 4096
PATH_MAX = 4096
NAME_MAX = 255
MIN_DISK = 1 << 20
MAX_DISK = 1 << 40
MAX_PROCESSES = 4096          # node_agent.runtime.spec.MAX_PROCESS_LIMIT
MAX_NODE_VCPUS = 4096
MAX_NODE_MEMORY = 64 << 40
MAX_RATIO = 64.0
NODE_ARCHES = frozenset({pb.ARCH_X86_64, pb.ARCH_I386})
SHOWN = 80  # characters of an offending value quoted in a message


def shown(value: str) -> str:
    """A value as a message quotes it: repr (escapes every control character), cut short."""
    if len(value) > SHOWN:
        return repr(value[:SHOWN]) + "…"
    return repr(value)


# -- names and labels ------------------------------------------------------------------------


def check_name(kind: str, name: str) -> None:
    if not DNS_LABEL.fullmatch(name):
        raise InvalidArgument(
            f"invalid {kind} name {shown(name)}: must be a DNS label (lower-case letters, "
            "digits and '-', starting and ending with a letter or digit, at most 63 characters)"
        )


def _check_label_key(what: str, key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        raise InvalidArgument(f"invalid {what} key {shown(key)}: empty prefix before '/'")
    if slash and (len(prefix) > MAX_LABEL_PREFIX or not DNS_SUBDOMAIN.fullmatch(prefix)):
        raise InvalidArgument(
            f"invalid {what} key {shown(key)}: its prefix must be a DNS subdomain (lower-case "
            f"letters, digits, '-' and '.') of at most {MAX_LABEL_PREFIX} characters")
    if len(name) > MAX_LABEL_NAME:
        raise InvalidArgument(f"invalid {what} key {shown(key)}: its name is longer than "
                              f"{MAX_LABEL_NAME} characters")
    if not LABEL_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid {what} key {shown(key)}: must be [PREFIX/]NAME, NAME of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit")


def check_labels(what: str, labels: Mapping[str, str]) -> None:
    """Kubernetes' rules for label keys and values, and at most MAX_LABELS of them."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"too many {what}s: {len(labels)} (at most {MAX_LABELS})")
    for key, value in labels.items():
        _check_label_key(what, key)
        if len(value) > MAX_LABEL_NAME:
            raise InvalidArgument(
                f"{what} {shown(key)}: value longer than {MAX_LABEL_NAME} characters")
        if value and not LABEL_NAME.fullmatch(value):
            raise InvalidArgument(
                f"invalid {what} value {shown(value)} for {shown(key)}: must be empty or "
                "letters, digits, '-', '_' and '.', starting and ending with a letter or digit")


# -- partitions ------------------------------------------------------------------------------


def check_args_env(args: Sequence[str], env: Mapping[str, str]) -> None:
    """What execve would take: no NUL anywhere, bounded in count and size."""
    items = len(args) + len(env)
    if items > MAX_ARG_ITEMS:
        raise InvalidArgument(f"arguments and environment hold {items} strings "
                              f"(at most {MAX_ARG_ITEMS})")
    size = 0
    for i, arg in enumerate(args, 1):
        if "\0" in arg:
            raise InvalidArgument(f"argument {i} contains a NUL character")
        size += len(arg.encode()) + 1
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"invalid environment variable name {shown(key)}: "
                                  "it must be non-empty, without '=' or NUL")
        if "\0" in value:
            raise InvalidArgument(f"environment variable {shown(key)}: its value contains "
                                  "a NUL character")
        size += len(key.encode()) + len(value.encode()) + 2
    if size > MAX_ARGS_BYTES:
        raise InvalidArgument("arguments and environment exceed 128Ki")


def check_disk(disk_bytes: int) -> None:
    if disk_bytes and not MIN_DISK <= disk_bytes <= MAX_DISK:
        raise InvalidArgument(f"disk must be 0 (the default, 1Gi) or between 1Mi and 1Ti, "
                              f"got {format_size(disk_bytes)}")


def stop_grace(grace_s: float | None, force: bool) -> float:
    """The seconds a stop gives the guest between SIGTERM and turning it off: `force` is
    Turn Off (0), unset (None) is the default Shut Down grace, else 0..MAX_STOP_GRACE_S."""
    if force:
        if grace_s is not None:
            raise InvalidArgument("force turns the partition off at once; it takes no "
                                  "grace_seconds (leave force unset for a Shut Down)")
        return 0.0
    if grace_s is None:
        return DEFAULT_STOP_GRACE_S
    if not (math.isfinite(grace_s) and 0.0 <= grace_s <= MAX_STOP_GRACE_S):
        raise InvalidArgument(f"grace_seconds must be between 0 and {MAX_STOP_GRACE_S:g} "
                              f"(an hour), got {grace_s!r}")
    return grace_s


def normalize_spec(spec: pb.PartitionSpec) -> None:
    """Fill defaults and refuse what no node could ever run. Mutates spec."""
    if not spec.image:
        raise InvalidArgument("an image is required")
    split_image_reference(spec.image)
    if spec.image_digest and not DIGEST.fullmatch(spec.image_digest):
        raise InvalidArgument(f"image digest {shown(spec.image_digest)} is not sha256: "
                              "followed by 64 lower-case hex digits")
    if spec.workdir:
        check_entrypoint(spec.workdir, "working directory")
        if not spec.workdir.startswith("/"):
            raise InvalidArgument(f"working directory {shown(spec.workdir)} is not absolute")
    if spec.entrypoint:
        check_entrypoint(spec.entrypoint)
        if not spec.entrypoint.startswith("/"):
            raise InvalidArgument(f"entrypoint {shown(spec.entrypoint)} is not absolute")
    if spec.node:  # deprecated; still looked up as the first placement's target
        check_name("node", spec.node)
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
    check_disk(spec.disk_bytes)
    if spec.max_processes > MAX_PROCESSES:
        raise InvalidArgument(f"max_processes must be 0 (the default, 512) or between 1 and "
                              f"{MAX_PROCESSES}, got {spec.max_processes}")
    if spec.placement_strategy not in STRATEGIES:
        raise InvalidArgument(
            f"unknown placement strategy {shown(spec.placement_strategy)}: "
            "use binpack or spread"
        )
    if spec.max_per_node and not spec.anti_affinity_group:
        raise InvalidArgument("max_per_node needs an anti_affinity_group")
    if spec.anti_affinity_group:
        check_name("anti-affinity group", spec.anti_affinity_group)
    check_labels("label", spec.labels)
    check_labels("node selector", spec.node_selector)
    check_args_env(spec.args, spec.env)
    if spec.restart_policy == pb.RESTART_POLICY_UNSPECIFIED:
        spec.restart_policy = pb.RESTART_POLICY_NEVER
    if spec.desired_state == pb.DESIRED_STATE_UNSPECIFIED:
        spec.desired_state = pb.DESIRED_STATE_RUNNING


# -- images ----------------------------------------------------------------------------------


def check_entrypoint(path: str, what: str = "entrypoint") -> None:
    if len(path.encode()) > PATH_MAX:
        raise InvalidArgument(f"{what} longer than {PATH_MAX} bytes (PATH_MAX)")
    if has_controls(path):
        raise InvalidArgument(f"{what} {shown(path)} contains control characters")
    for part in path.split("/"):
        if len(part.encode()) > NAME_MAX:
            raise InvalidArgument(f"{what} component {shown(part)} is longer than "
                                  f"{NAME_MAX} bytes (NAME_MAX)")


def check_tag(tag: str) -> None:
    if not TAG.fullmatch(tag):
        raise InvalidArgument(f"invalid image tag {shown(tag)}: at most 128 of A-Z a-z 0-9 "
                              "_ . -, not starting with . or -")


def split_image_reference(text: str) -> tuple[str, str, str]:
    """(name, tag, digest) of NAME, NAME:TAG or NAME@sha256:HEX; the tag is "latest" when
    neither is given, "" with a digest."""
    name, at, digest = text.partition("@")
    if at:
        if not DIGEST.fullmatch(digest):
            raise InvalidArgument(f"invalid image reference {shown(text)}: the digest must be "
                                  "sha256: followed by 64 lower-case hex digits")
        check_name("image", name)
        return name, "", digest
    name, colon, tag = text.partition(":")
    check_name("image", name)
    if not colon:
        return name, "latest", ""
    check_tag(tag)
    return name, tag, ""


def check_image_header(name: str, fmt: str, entrypoint: str, digest: str) -> None:
    """The strings of a pushed image's header (its content is checked by controller.images)."""
    check_name("image", name)
    if fmt == "tar":
        check_entrypoint(entrypoint)
    if digest and not DIGEST.fullmatch(digest):
        raise InvalidArgument(f"announced digest {shown(digest)} is not sha256: followed by "
                              "64 lower-case hex digits")


# -- nodes -----------------------------------------------------------------------------------


def check_address(address: str) -> None:
    """"" or HOST:PORT, HOST a DNS name, an IPv4 address or a bracketed IPv6 address."""
    if not address:
        return
    host, colon, port = address.rpartition(":")
    bad = InvalidArgument(f"invalid node address {shown(address)}: expected HOST:PORT (a DNS "
                          "name, an IPv4 address or [IPv6]; port 1..65535)")
    if not colon or not PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad from None
        if "%" in host:  # no zone ids: they are free text
            raise bad
        return
    if len(host) > MAX_LABEL_PREFIX or not HOSTNAME.fullmatch(host):
        raise bad


def _check_ratio(what: str, ratio: float) -> None:
    if not (math.isfinite(ratio) and 0 <= ratio <= MAX_RATIO):
        raise InvalidArgument(f"{what}_allocation_ratio must be finite and within "
                              f"(0, {MAX_RATIO:g}], or 0 for the default; got {ratio!r}")


def check_node_registration(name: str, spec: pb.NodeSpec) -> None:
    """A node's declared name and capacity, before anything of it is written: a negative
    ratio or a million vCPUs would skew placement for the whole cluster."""
    check_name("node", name)
    if not 1 <= spec.vcpus <= MAX_NODE_VCPUS:
        raise InvalidArgument(f"a node's vcpus must be between 1 and {MAX_NODE_VCPUS}, "
                              f"got {spec.vcpus}")
    if not MIN_MEMORY <= spec.memory_bytes <= MAX_NODE_MEMORY:
        raise InvalidArgument(f"a node's memory must be between 1Mi and 64Ti, got "
                              f"{format_size(spec.memory_bytes)}")
    _check_ratio("cpu", spec.cpu_allocation_ratio)
    _check_ratio("memory", spec.memory_allocation_ratio)
    if not spec.arches:
        raise InvalidArgument("a node must declare the architectures it can emulate")
    if any(a not in NODE_ARCHES for a in spec.arches) or \
            len(set(spec.arches)) != len(spec.arches):
        raise InvalidArgument("a node's architectures must be distinct, each x86_64 or i386")
    check_labels("node label", spec.labels)
    check_address(spec.address)
    if spec.agent_version and not VERSION.fullmatch(spec.agent_version):
        raise InvalidArgument(f"invalid agent_version {shown(spec.agent_version)}: at most 64 "
                              "letters, digits and '-', '_', '.', '+', '~'")
    if spec.host_arch and not HOST_ARCH.fullmatch(spec.host_arch):
        raise InvalidArgument(f"invalid host_arch {shown(spec.host_arch)}: at most 32 "
                              "letters, digits and '_'")
