"""The partition state machine's vocabulary: the phase sets, the typed events it takes, and
the outcome it returns (machine.py has the rules)."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

P = pb
C = apb.ReportCause
MAX_CHECKPOINTS = 50
# Shut Down: seconds from SIGTERM to every guest process until the guest is turned off.
# The default is docker stop's (10 s): long enough for a service to flush and exit, short
# enough that a stop is not mistaken for a hang. A grace above an hour is a typo.
DEFAULT_STOP_GRACE_S = 10.0
MAX_STOP_GRACE_S = 3600.0

# Phases in which a partition holds a binding (and capacity) on its node.
HOLDING = frozenset({
    P.PARTITION_PHASE_SCHEDULED, P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING,
    P.PARTITION_PHASE_PAUSED, P.PARTITION_PHASE_SAVING, P.PARTITION_PHASE_STOPPING,
})
# Phases from which `start` places the partition again.
STARTABLE = frozenset({
    P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_FAILED, P.PARTITION_PHASE_LOST,
    P.PARTITION_PHASE_SAVED,
})
# Phases a drain or the checker expects to end by themselves soon.
TRANSITIONAL = frozenset({
    P.PARTITION_PHASE_SCHEDULED, P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_SAVING,
    P.PARTITION_PHASE_STOPPING,
})
# Desired states that want a guest to exist (running or paused) on some node.
WANTS_GUEST = frozenset({P.DESIRED_STATE_RUNNING, P.DESIRED_STATE_PAUSED})


def phase_name(phase: int) -> str:
    name = P.PartitionPhase.Name(phase)  # type: ignore[arg-type]
    return name.removeprefix("PARTITION_PHASE_").capitalize()


# -- events ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """The user starts it (from Off, Failed, Lost or Saved); optionally on one node."""
    target_node: str = ""


@dataclass(frozen=True)
class Stop:
    """The user stops it: wanted Off. Shut Down gives the guest `grace_s` seconds between
    SIGTERM and being turned off; 0 is Turn Off (at once)."""
    grace_s: float = DEFAULT_STOP_GRACE_S


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Save:
    """Write its state to disk on its node and end the worker (wanted Saved)."""


@dataclass(frozen=True)
class Move:
    """Start on `to` next time. Only while stopped: there is no live migration."""
    to: str


@dataclass(frozen=True)
class CheckpointCreate:
    name: str


@dataclass(frozen=True)
class CheckpointApply:
    name: str


@dataclass(frozen=True)
class CheckpointDelete:
    name: str


@dataclass(frozen=True)
class Delete:
    force: bool = False


@dataclass(frozen=True)
class Reported:
    """What the agent of the partition's node reports for the partition's current epoch
    (stale epochs never get here: the caller stops those copies)."""
    node: str
    phase: int
    cause: int = C.REPORT_CAUSE_UNSPECIFIED
    exit_code: int | None = None
    reason: str = ""
    state: pb.StateRef | None = None
    time: Timestamp | None = None


@dataclass(frozen=True)
class CheckpointTaken:
    """The agent wrote (or could not write: `error`) checkpoint `name`."""
    name: str
    state: pb.StateRef | None = None
    error: str = ""
    time: Timestamp | None = None


@dataclass(frozen=True)
class Placed:
    """The scheduler chose `node` (committed with the binding in the same transaction)."""
    node: str


@dataclass(frozen=True)
class Unplaceable:
    """No node fits now; `reason` says why (e.g. "0/3 nodes available: …")."""
    reason: str


@dataclass(frozen=True)
class NodeLost:
    """The partition's node lost its lease and its grace ran out (leader, eviction)."""
    node: str


@dataclass(frozen=True)
class DrainMove:
    """A drain moves it away with Quick Migration: save here, restore elsewhere."""
    node: str


@dataclass(frozen=True)
class DrainStop:
    """A drain stops it so that it is placed elsewhere (not started yet, or unsavable)."""
    node: str


Event = (Start | Stop | Pause | Resume | Save | Move | CheckpointCreate | CheckpointApply
         | CheckpointDelete | Delete | Reported | CheckpointTaken | Placed | Unplaceable
         | NodeLost | DrainMove | DrainStop)


# -- what a transition produces -------------------------------------------------------------

@dataclass(frozen=True)
class Note:
    """An event to record with the change: CamelCase reason, one sentence."""
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class View:
    """A partition as stored: the object and its binding ("" / 0 when unbound)."""
    partition: pb.Partition
    bound_node: str = ""
    epoch: int = 0


@dataclass
class Outcome:
    partition: pb.Partition          # the new object (a copy; the view is not modified)
    write: bool = False              # anything to write at all
    release: bool = False            # drop its binding and its node's allocation entry
    bind: str = ""                   # bind it to this node (Placed)
    delete: bool = False             # delete it (and release)
    notes: list[Note] = field(default_factory=list)
    removed: pb.Checkpoint | None = None  # CheckpointDelete: the checkpoint dropped

    def note(self, reason: str, message: str, warning: bool = False) -> None:
        self.notes.append(Note(reason, message, warning))
