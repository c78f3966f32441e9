"""`viridian apply -f FILE`: make partitions look like a file says (create or update).

The file is YAML or JSON holding what `viridian get NAME -o yaml` prints (a Partition: name
and spec; status and revision are ignored), or a list of them. A partition that does not
exist is created from its spec. One that exists is updated where UpdatePartition can change
it (labels, restart policy, vCPUs, memory); any other spec field of the file that differs
from the partition is an error naming the field. Only the spec fields the file holds are
compared, and `desired_state` is not applied (start and stop do that). Applying the same
file twice changes nothing the second time ("unchanged").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click
import grpc
import yaml
from google.protobuf import json_format
from viridian.v1 import controller_pb2, controller_pb2_grpc, types_pb2

from controller.cli.app import get_client
from controller.cli.errors import CliError

__all__ = ["COMMANDS", "Desired", "load_partitions", "plan_update"]

P = types_pb2.Partition
SPEC_FIELDS = {f.name: f for f in types_pb2.PartitionSpec.DESCRIPTOR.fields}
SPEC_JSON_NAMES = {f.json_name: f.name for f in types_pb2.PartitionSpec.DESCRIPTOR.fields}
UPDATABLE = ("labels", "restart_policy", "vcpus", "memory_bytes")
# Filled in or replaced by the controller, or operational rather than configuration.
IGNORED = ("image_digest", "desired_state")
MAX_FILE_BYTES = 4 << 20


@dataclass(frozen=True)
class Desired:
    """One partition of the file: the object and which spec fields the file holds."""

    partition: P
    fields: frozenset[str]


def _parse_one(data: Any, where: str) -> Desired:
    if not isinstance(data, dict):
        raise CliError(f"{where}: expected a partition (a mapping with name and spec)")
    if not data.get("name"):
        raise CliError(f"{where}: a partition needs a name")
    spec = data.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise CliError(f"{where}: spec must be a mapping")
    partition = P()
    # status (and its timestamps, which YAML may have turned into dates) is the
    # controller's to write: not applied, not even parsed.
    data = {k: v for k, v in data.items() if k != "status"}
    try:
        json_format.ParseDict(data, partition)
    except json_format.ParseError as err:
        raise CliError(f"{where}: {err}") from None
    fields = frozenset(SPEC_JSON_NAMES.get(str(k), str(k)) for k in (spec or {}))
    return Desired(partition, fields)


def load_partitions(text: str, source: str) -> list[Desired]:
    """The partitions of a YAML or JSON document (JSON is YAML): one, or a list."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CliError(f"{source}: not YAML or JSON: {err}".splitlines()[0]) from None
    items = data if isinstance(data, list) else [data]
    if not items or items == [None]:
        raise CliError(f"{source}: no partition in it")
    out = [_parse_one(item, f"{source}: item {i}" if isinstance(data, list) else source)
           for i, item in enumerate(items, 1)]
    names = [d.partition.name for d in out]
    if len(set(names)) != len(names):
        raise CliError(f"{source}: a partition is named twice")
    return out


def _value(spec: types_pb2.PartitionSpec, field: str) -> Any:
    value = getattr(spec, field)
    descriptor = SPEC_FIELDS[field]
    if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
        return dict(value)
    if descriptor.is_repeated:
        return list(value)
    if field == "restart_policy" and value == types_pb2.RESTART_POLICY_UNSPECIFIED:
        return types_pb2.RESTART_POLICY_NEVER  # what the controller makes of it
    return value


def plan_update(desired: Desired, live: P) -> controller_pb2.UpdatePartitionRequest | None:
    """The UpdatePartition that makes `live` what the file says (None: nothing differs);
    CliError naming the first field that differs and cannot change."""
    want = desired.partition.spec
    name = desired.partition.name
    for field in sorted(desired.fields - set(UPDATABLE) - set(IGNORED)):
        if _value(want, field) != _value(live.spec, field):
            raise CliError(
                f"partition {name}: spec.{field} cannot change after create (apply can change "
                f"{', '.join(UPDATABLE)}); delete the partition and apply again to replace it")
    request = controller_pb2.UpdatePartitionRequest(name=name, expected_revision=live.revision)
    if "labels" in desired.fields:
        request.set_labels.update({k: v for k, v in want.labels.items()
                                   if live.spec.labels.get(k) != v or k not in live.spec.labels})
        request.remove_labels.extend(sorted(set(live.spec.labels) - set(want.labels)))
    if "restart_policy" in desired.fields and (
            _value(want, "restart_policy") != _value(live.spec, "restart_policy")):
        request.restart_policy = _value(want, "restart_policy")
    if "vcpus" in desired.fields and want.vcpus and want.vcpus != live.spec.vcpus:
        request.vcpus = want.vcpus
    if ("memory_bytes" in desired.fields and want.memory_bytes
            and want.memory_bytes != live.spec.memory_bytes):
        request.memory_bytes = want.memory_bytes
    changes = (request.set_labels or request.remove_labels or request.restart_policy
               or request.vcpus or request.memory_bytes)
    return request if changes else None


def _apply_one(stub: controller_pb2_grpc.ControllerStub, desired: Desired) -> str:
    name = desired.partition.name
    try:
        live = stub.GetPartition(controller_pb2.GetPartitionRequest(name=name))
    except grpc.RpcError as err:
        if not (isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.NOT_FOUND):
            raise
        spec = types_pb2.PartitionSpec()
        spec.CopyFrom(desired.partition.spec)
        spec.ClearField("image_digest")  # resolved from spec.image by the controller
        stub.CreatePartition(controller_pb2.CreatePartitionRequest(name=name, spec=spec))
        return f"partition {name} created"
    request = plan_update(desired, live)
    if request is None:
        return f"partition {name} unchanged"
    stub.UpdatePartition(request)
    return f"partition {name} configured"


@click.command("apply")
@click.option("-f", "--filename", "path", required=True, metavar="FILE",
              help="YAML or JSON file (as `viridian get NAME -o yaml` prints), '-' for stdin.")
@click.pass_context
def apply_cmd(ctx: click.Context, path: str) -> None:
    """Create or update partitions from FILE (idempotent: unchanged ones are left alone)."""
    source = "stdin" if path == "-" else path
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise CliError(f"cannot read {source}: {err.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CliError(f"{source}: larger than 4Mi")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise CliError(f"{source}: not UTF-8 text") from None
    wanted = load_partitions(text, source)
    stub = get_client(ctx).stub
    for desired in wanted:
        click.echo(_apply_one(stub, desired))


COMMANDS = [apply_cmd]
