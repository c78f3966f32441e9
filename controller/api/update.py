"""Public API: UpdatePartition, a partition changed after create (Hyper-V's Set-VM).

Labels and the restart policy may change at any time. vCPUs and memory are what placement
reserved on a node, so they change only while no node holds the partition: Off, or for
vCPUs also Saved. Memory is refused while Saved: the saved state is the guest's memory as it
was, laid out for the old size, and a restore into a different size is not something the
runtime promises. The new spec is validated exactly as create validates one, and written
compare-and-swap on the revision read (the store's change helper retries on a conflict).
"""

from __future__ import annotations

from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.api.context import ApiContext
from controller.errors import Conflict, FailedPrecondition, InvalidArgument
from controller.grpc_errors import Context, map_errors
from controller.partitions.events import Outcome
from controller.scheduler.units import format_size
from controller.store.records import StoredPartition
from controller.validation import check_name, normalize_spec

__all__ = ["UpdateApi", "updated"]

P = pb
_PHASE_NAMES = {value: name.removeprefix("PARTITION_PHASE_").capitalize()
                for name, value in pb.PartitionPhase.items()}


def _phase(p: pb.Partition) -> str:
    return _PHASE_NAMES.get(p.status.phase, "Unknown")


def updated(sp: StoredPartition, request: cpb.UpdatePartitionRequest) -> Outcome:
    """The outcome of `request` on the partition as read (pure: raises domain errors)."""
    old = sp.partition
    if request.expected_revision and request.expected_revision != sp.mod_revision:
        raise Conflict(f"partition {request.name!r} changed (revision {sp.mod_revision}, "
                       f"expected {request.expected_revision}); read it again")
    p = pb.Partition()
    p.CopyFrom(old)
    spec = p.spec
    changes: list[str] = []
    for key in request.remove_labels:
        if key in request.set_labels:
            raise InvalidArgument(f"label {key!r} is both set and removed")
        if key in spec.labels:
            del spec.labels[key]
            changes.append(f"label {key} removed")
    for key, value in sorted(request.set_labels.items()):
        if spec.labels.get(key) != value or key not in spec.labels:
            spec.labels[key] = value
            changes.append(f"label {key}={value}")
    if request.restart_policy not in pb.RestartPolicy.values():
        raise InvalidArgument(f"unknown restart policy {request.restart_policy}")
    if request.restart_policy and request.restart_policy != spec.restart_policy:
        spec.restart_policy = request.restart_policy
        name = pb.RestartPolicy.Name(request.restart_policy)
        changes.append("restart " + name.removeprefix("RESTART_POLICY_").lower())
    resize: list[str] = []
    if request.vcpus and request.vcpus != spec.vcpus:
        resize.append(f"vCPUs {spec.vcpus} -> {request.vcpus}")
        spec.vcpus = request.vcpus
    if request.memory_bytes and request.memory_bytes != spec.memory_bytes:
        resize.append(f"memory {format_size(spec.memory_bytes)} -> "
                      f"{format_size(request.memory_bytes)}")
        spec.memory_bytes = request.memory_bytes
    if resize:
        _check_resizable(old, sp, memory=spec.memory_bytes != old.spec.memory_bytes)
        changes += resize
    if not changes:
        return Outcome(partition=p)
    normalize_spec(spec)  # exactly what create accepts
    out = Outcome(partition=p, write=True)
    out.note("Updated", "; ".join(changes))
    return out


def _check_resizable(p: pb.Partition, sp: StoredPartition, *, memory: bool) -> None:
    phase = p.status.phase
    if phase not in (P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_SAVED) or sp.binding_node:
        raise FailedPrecondition(
            f"partition {p.name!r} is {_phase(p)}: vCPUs and memory change only while it is "
            "Off or Saved (stop or save it first)")
    if not memory:
        return
    if phase == P.PARTITION_PHASE_SAVED or p.status.saved_state.digest:
        raise FailedPrecondition(
            f"partition {p.name!r} holds a saved state: it is the guest's memory at "
            f"{format_size(p.spec.memory_bytes)} and is restored as it is, so its memory "
            "cannot change (vCPUs can)")
    held = sorted(cp.name for cp in p.status.checkpoints
                  if cp.state.digest or cp.taken_in != P.PARTITION_PHASE_OFF)
    if held:
        raise FailedPrecondition(
            f"partition {p.name!r} has checkpoints holding the guest's memory at "
            f"{format_size(p.spec.memory_bytes)} ({', '.join(held)}): applying one restores "
            "that memory as it was; delete them to change its memory")


class UpdateApi:
    """The UpdatePartition RPC (mixed into the Controller service)."""

    ctx: ApiContext

    @map_errors
    async def UpdatePartition(
        self, request: cpb.UpdatePartitionRequest, context: Context
    ) -> pb.Partition:
        check_name("partition", request.name)
        await self.ctx.store.partitions.change(request.name, lambda sp: updated(sp, request))
        return (await self.ctx.store.partitions.get(request.name)).partition
