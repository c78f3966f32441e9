"""The partition state machine: the one place where a partition's phase or desired state
changes.

`transition(view, event, now)` is pure: it takes a partition as stored (with its binding)
and one typed event — an API request, an agent's report, a placement, a lost node, a drain
step — and returns an Outcome: the partition as it must be written, whether its binding is
to be released, created or the partition deleted, and the events to record, all in one
transaction by the store. A request that does not fit the current phase raises a domain
error (FailedPrecondition, NotFound, AlreadyExists, ResourceExhausted); an event that no
longer applies (a stale decision, a duplicate report) returns an Outcome that writes
nothing.

Invariant kept by every transition: a partition holds a binding to a node exactly while its
phase is one of HOLDING. Entering HOLDING happens only through Placed (the scheduler's
bind); every transition that leaves HOLDING releases the binding.

    Pending ──Placed──▶ Scheduled ─▶ Starting ─▶ Running ⇄ Paused
                                                  │  Save / DrainMove
                                                  ▼
                                  Saving ─(Saved report)─▶ Saved ─Start─▶ Pending
    Running|Paused|… ─Stop─▶ Stopping ─(report)─▶ Off
        (status.stop_grace_seconds, set only while Stopping, is what the agent gives the
        guest between SIGTERM and turning it off: the user's Shut Down grace, 0 for Turn
        Off and for the controller's own stops — drains, checkpoint reverts)
    guest exit ─▶ Off | Failed | Pending (restart policy)
    NodeLost / Fenced ─▶ Lost | Pending (HA: cold start elsewhere)
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from controller.partitions.events import (
    DEFAULT_STOP_GRACE_S,
    HOLDING,
    MAX_CHECKPOINTS,
    MAX_STOP_GRACE_S,
    STARTABLE,
    TRANSITIONAL,
    WANTS_GUEST,
    CheckpointApply,
    CheckpointCreate,
    CheckpointDelete,
    CheckpointTaken,
    Delete,
    DrainMove,
    DrainStop,
    Event,
    Move,
    NodeLost,
    Note,
    Outcome,
    Pause,
    Placed,
    Reported,
    Resume,
    Save,
    Start,
    Stop,
    Unplaceable,
    View,
    phase_name,
)
from controller.scheduler.units import format_size

P = pb
C = apb.ReportCause
# The vocabulary is importable from here too: callers name the machine, not its parts.
__all__ = [
    "DEFAULT_STOP_GRACE_S", "HOLDING", "MAX_CHECKPOINTS", "MAX_STOP_GRACE_S", "STARTABLE",
    "TRANSITIONAL", "WANTS_GUEST",
    "CheckpointApply", "CheckpointCreate", "CheckpointDelete", "CheckpointTaken", "Delete",
    "DrainMove", "DrainStop", "Event", "Move", "NodeLost", "Note", "Outcome", "Pause",
    "Placed", "Reported", "Resume", "Save", "Start", "Stop", "Unplaceable", "View",
    "created", "find_checkpoint", "live_migration_refused", "needs_placement", "phase_name",
    "should_restart", "stop_words", "transition", "wanted_command",
]


def created(name: str, spec: pb.PartitionSpec, arch: int, now: Timestamp) -> pb.Partition:
    """A new partition: Pending when it is wanted running, else Off."""
    p = pb.Partition(name=name, spec=spec)
    st = p.status
    st.created_at.CopyFrom(now)
    st.updated_at.CopyFrom(now)
    st.arch = arch  # type: ignore[assignment]
    if spec.desired_state in WANTS_GUEST:
        spec.desired_state = P.DESIRED_STATE_RUNNING
        st.phase = P.PARTITION_PHASE_PENDING
        st.reason = "waiting for placement"
    else:
        spec.desired_state = P.DESIRED_STATE_OFF
        st.phase = P.PARTITION_PHASE_OFF
    return p


def needs_placement(p: pb.Partition, bound: bool) -> bool:
    return (not bound and p.status.phase == P.PARTITION_PHASE_PENDING
            and p.spec.desired_state in WANTS_GUEST)


def should_restart(p: pb.Partition, failed: bool, exit_code: int) -> bool:
    """The restart policy, for a guest that ended by itself while wanted running."""
    if p.spec.desired_state not in WANTS_GUEST:
        return False
    policy = p.spec.restart_policy
    if policy == P.RESTART_POLICY_ALWAYS:
        return True
    if policy == P.RESTART_POLICY_ON_FAILURE:
        return failed or exit_code != 0
    return False


def wanted_command(p: pb.Partition) -> int | None:
    """The command that moves a bound partition's actual phase towards what is wanted
    (PartitionCommand.Kind), or None. Dispatch sends it to the node."""
    K = apb.PartitionCommand
    phase, desired = p.status.phase, p.spec.desired_state
    if phase == P.PARTITION_PHASE_STOPPING:
        return K.KIND_STOP
    if phase == P.PARTITION_PHASE_SAVING:
        return K.KIND_SAVE
    if desired == P.DESIRED_STATE_PAUSED and phase == P.PARTITION_PHASE_RUNNING:
        return K.KIND_PAUSE
    if desired == P.DESIRED_STATE_RUNNING and phase == P.PARTITION_PHASE_PAUSED:
        return K.KIND_RESUME
    return None


# -- the transition function ----------------------------------------------------------------

def transition(view: View, event: Event, now: Timestamp) -> Outcome:
    """The change `event` makes to the partition in `view` (pure; `now` is injected)."""
    p = pb.Partition()
    p.CopyFrom(view.partition)
    out = Outcome(p)
    handler = _HANDLERS[type(event)]
    handler(view, p, event, now, out)
    if p.status.phase != P.PARTITION_PHASE_STOPPING:
        p.status.stop_grace_seconds = 0.0  # it describes the stop under way only
    if out.write or out.release or out.delete or out.bind:
        out.write = True
        p.status.updated_at.CopyFrom(now)
    _check_invariant(view, event, out)
    return out


def _check_invariant(view: View, event: Event, out: Outcome) -> None:
    if out.delete:
        return
    bound = (bool(view.bound_node) and not out.release) or bool(out.bind)
    holding = out.partition.status.phase in HOLDING
    if bound != holding:  # a bug in a handler below, never a user error
        raise AssertionError(
            f"{view.partition.name}: {phase_name(out.partition.status.phase)} "
            f"{'with' if bound else 'without'} a binding after {type(event).__name__}")


def _release(p: pb.Partition, out: Outcome) -> None:
    # status.node keeps naming where it ran last: its console (logs) is there.
    out.release = True


# User requests ------------------------------------------------------------------------

def _start(view: View, p: pb.Partition, ev: Start, now: Timestamp, out: Outcome) -> None:
    st = p.status
    if p.spec.desired_state in WANTS_GUEST and st.phase not in STARTABLE:
        if st.phase == P.PARTITION_PHASE_STOPPING:
            raise FailedPrecondition(
                f"partition {p.name!r} is Stopping; start it again once it is Off")
        if st.phase == P.PARTITION_PHASE_PAUSED or (
                p.spec.desired_state == P.DESIRED_STATE_PAUSED):
            raise FailedPrecondition(
                f"partition {p.name!r} is {phase_name(st.phase)}; resume it instead")
        if ev.target_node and ev.target_node != (view.bound_node or st.target_node):
            raise FailedPrecondition(
                f"partition {p.name!r} is {phase_name(st.phase)} on "
                f"{view.bound_node or 'no node yet'}; stop it first to start it on "
                f"{ev.target_node}")
        return  # already starting or running
    if st.phase not in STARTABLE and st.phase != P.PARTITION_PHASE_PENDING:
        raise FailedPrecondition(
            f"partition {p.name!r} is {phase_name(st.phase)}; it cannot be started")
    p.spec.desired_state = P.DESIRED_STATE_RUNNING
    st.phase = P.PARTITION_PHASE_PENDING
    if ev.target_node:
        st.target_node = ev.target_node
    st.reason = "waiting for placement" + (
        " (restoring its saved state)" if st.saved_state.digest else "")
    st.has_exit_code = False
    st.exit_code = 0
    out.write = True
    out.note("StartRequested", "start requested"
             + (f" on node {ev.target_node}" if ev.target_node else ""))


def stop_words(grace_s: float) -> str:
    """Hyper-V's words for a stop with this grace."""
    return f"Shut Down, grace {grace_s:g}s" if grace_s > 0 else "Turn Off"


def _stop(view: View, p: pb.Partition, ev: Stop, now: Timestamp, out: Outcome) -> None:
    st = p.status
    grace = max(0.0, ev.grace_s)  # the API refused anything else already
    p.spec.desired_state = P.DESIRED_STATE_OFF
    out.write = True
    out.note("StopRequested", f"stop requested ({stop_words(grace)})")
    if st.phase == P.PARTITION_PHASE_PENDING:
        st.phase = P.PARTITION_PHASE_OFF
        st.reason = "stopped before it was placed"
        st.target_node = ""
    elif st.phase in HOLDING and st.phase != P.PARTITION_PHASE_STOPPING:
        st.phase = P.PARTITION_PHASE_STOPPING
        st.reason = f"stop requested ({stop_words(grace)})"
        st.stop_grace_seconds = grace
    elif st.phase == P.PARTITION_PHASE_STOPPING and grace < st.stop_grace_seconds:
        # Turn Off while it shuts down: a stop under way may be shortened, never
        # lengthened (the guest has had its SIGTERM and its turn-off time is set).
        st.stop_grace_seconds = grace
        st.reason = f"stop requested ({stop_words(grace)})"


def _pause(view: View, p: pb.Partition, ev: Pause, now: Timestamp, out: Outcome) -> None:
    if p.spec.desired_state == P.DESIRED_STATE_PAUSED and p.status.phase in (
            P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
        return
    if p.status.phase != P.PARTITION_PHASE_RUNNING:
        raise FailedPrecondition(f"partition {p.name!r} is {phase_name(p.status.phase)}; "
                                 "only a Running partition can be paused")
    p.spec.desired_state = P.DESIRED_STATE_PAUSED
    out.write = True
    out.note("PauseRequested", "pause requested")


def _resume(view: View, p: pb.Partition, ev: Resume, now: Timestamp, out: Outcome) -> None:
    phase = p.status.phase
    if phase == P.PARTITION_PHASE_RUNNING and p.spec.desired_state == P.DESIRED_STATE_RUNNING:
        return
    if phase not in (P.PARTITION_PHASE_PAUSED, P.PARTITION_PHASE_RUNNING) or (
            p.spec.desired_state not in WANTS_GUEST):
        raise FailedPrecondition(f"partition {p.name!r} is {phase_name(phase)}; "
                                 "only a Paused partition can be resumed")
    p.spec.desired_state = P.DESIRED_STATE_RUNNING
    out.write = True
    out.note("ResumeRequested", "resume requested")


def _save(view: View, p: pb.Partition, ev: Save, now: Timestamp, out: Outcome) -> None:
    st = p.status
    if st.phase == P.PARTITION_PHASE_SAVED or (
            st.phase == P.PARTITION_PHASE_SAVING
            and p.spec.desired_state == P.DESIRED_STATE_SAVED):
        return
    if st.phase == P.PARTITION_PHASE_SAVING:  # a drain's save: keep it saved afterwards
        p.spec.desired_state = P.DESIRED_STATE_SAVED
        out.write = True
        out.note("SaveRequested", "save requested (a drain is saving it already)")
        return
    if st.phase not in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
        raise FailedPrecondition(f"partition {p.name!r} is {phase_name(st.phase)}; "
                                 "only a Running or Paused partition can be saved")
    p.spec.desired_state = P.DESIRED_STATE_SAVED
    st.phase = P.PARTITION_PHASE_SAVING
    st.reason = "saving its state"
    out.write = True
    out.note("SaveRequested", "save requested")


def live_migration_refused(name: str, phase: int, to: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"partition {name!r} is {phase_name(phase)}: live migration is not supported "
        "(a partition moves between nodes only while Off or Saved). To move it with a short "
        f"interruption: viridian save {name} && viridian move {name} --to {to} && "
        f"viridian start {name}"
    )


def _move(view: View, p: pb.Partition, ev: Move, now: Timestamp, out: Outcome) -> None:
    st = p.status
    if st.phase == P.PARTITION_PHASE_PENDING:
        raise FailedPrecondition(f"partition {p.name!r} is Pending (about to start): stop "
                                 "it first, then move it")
    if st.phase in HOLDING:
        raise live_migration_refused(p.name, st.phase, ev.to)
    st.target_node = ev.to
    out.write = True
    holder = st.saved_state.node if st.phase == P.PARTITION_PHASE_SAVED else ""
    what = "with its saved state" if holder else "cold"
    out.note("Moved", f"moved to node {ev.to} ({what}); it starts there next")


def find_checkpoint(p: pb.Partition, name: str) -> pb.Checkpoint:
    for cp in p.status.checkpoints:
        if cp.name == name:
            return cp
    raise NotFound(f"partition {p.name!r} has no checkpoint {name!r}")


def _checkpoint_create(view: View, p: pb.Partition, ev: CheckpointCreate, now: Timestamp,
                       out: Outcome) -> None:
    st = p.status
    if any(cp.name == ev.name for cp in st.checkpoints):
        raise AlreadyExists(f"partition {p.name!r} already has checkpoint {ev.name!r}")
    if len(st.checkpoints) >= MAX_CHECKPOINTS:
        raise ResourceExhausted(f"partition {p.name!r} has {MAX_CHECKPOINTS} checkpoints, "
                                "the maximum; delete one first")
    if st.phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
        # Taken by the agent (brief pause); the state is filled in by its report.
        st.checkpoints.append(pb.Checkpoint(name=ev.name, taken_in=st.phase))
    elif st.phase == P.PARTITION_PHASE_SAVED:
        st.checkpoints.append(pb.Checkpoint(name=ev.name, state=st.saved_state,
                                            created_at=now, taken_in=st.phase))
    elif st.phase in (P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_FAILED,
                      P.PARTITION_PHASE_LOST):
        st.checkpoints.append(pb.Checkpoint(name=ev.name, created_at=now,
                                            taken_in=P.PARTITION_PHASE_OFF))
    else:
        raise FailedPrecondition(
            f"partition {p.name!r} is {phase_name(st.phase)}; a checkpoint is taken while "
            "Running, Paused, Saved or Off")
    out.write = True
    out.note("CheckpointRequested", f"checkpoint {ev.name} requested")


def _checkpoint_apply(view: View, p: pb.Partition, ev: CheckpointApply, now: Timestamp,
                      out: Outcome) -> None:
    st = p.status
    cp = find_checkpoint(p, ev.name)
    if cp.taken_in != P.PARTITION_PHASE_OFF and not cp.state.digest:
        raise FailedPrecondition(f"checkpoint {cp.name!r} is still being taken")
    if st.phase == P.PARTITION_PHASE_SAVING:
        raise FailedPrecondition(f"partition {p.name!r} is Saving; apply the checkpoint "
                                 "once it is Saved")
    if cp.state.digest:
        st.saved_state.CopyFrom(cp.state)
    else:
        st.ClearField("saved_state")
    st.reason = f"reverting to checkpoint {cp.name}"
    out.write = True
    out.note("CheckpointApplied", f"reverted to checkpoint {cp.name}")
    if st.phase in HOLDING:
        # Stop this run (Turn Off: its state is discarded); the stop report places it
        # again, restoring the checkpoint.
        p.spec.desired_state = P.DESIRED_STATE_RUNNING
        st.phase = P.PARTITION_PHASE_STOPPING
        st.stop_grace_seconds = 0.0
        return
    if st.phase == P.PARTITION_PHASE_PENDING and p.spec.desired_state in WANTS_GUEST:
        return  # it starts from the checkpoint's state
    st.phase = P.PARTITION_PHASE_SAVED if cp.state.digest else P.PARTITION_PHASE_OFF
    p.spec.desired_state = P.DESIRED_STATE_SAVED if cp.state.digest else P.DESIRED_STATE_OFF


def _checkpoint_delete(view: View, p: pb.Partition, ev: CheckpointDelete, now: Timestamp,
                       out: Outcome) -> None:
    cp = find_checkpoint(p, ev.name)
    removed = pb.Checkpoint()
    removed.CopyFrom(cp)
    kept = [c for c in p.status.checkpoints if c.name != ev.name]
    del p.status.checkpoints[:]
    p.status.checkpoints.extend(kept)
    out.removed = removed
    out.write = True
    out.note("CheckpointDeleted", f"checkpoint {ev.name} deleted")


def _delete(view: View, p: pb.Partition, ev: Delete, now: Timestamp, out: Outcome) -> None:
    phase = p.status.phase
    if phase in HOLDING and not ev.force:
        raise FailedPrecondition(f"partition {p.name!r} is {phase_name(phase)}: stop it "
                                 "first, or delete with --force")
    out.delete = True
    out.release = bool(view.bound_node)
    out.note("Deleted", "deleted" + (f" (was {phase_name(phase)} on node "
                                     f"{view.bound_node})" if view.bound_node else ""))


# Agent reports -----------------------------------------------------------------------

def _reported(view: View, p: pb.Partition, ev: Reported, now: Timestamp,
              out: Outcome) -> None:
    st = p.status
    if st.phase not in HOLDING:
        return  # bound reports only reach holding phases; nothing to do otherwise
    if ev.phase == P.PARTITION_PHASE_STARTING:
        if st.phase == P.PARTITION_PHASE_SCHEDULED:
            st.phase = P.PARTITION_PHASE_STARTING
            st.reason = f"starting on {ev.node}"
            out.write = True
        return
    if ev.phase in (P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_PAUSED):
        _reported_live(p, ev, now, out)
        return
    if ev.phase == P.PARTITION_PHASE_SAVED:
        _reported_saved(p, ev, out)
        return
    if ev.phase in (P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_FAILED):
        _reported_ended(p, ev, now, out)


def _reported_live(p: pb.Partition, ev: Reported, now: Timestamp, out: Outcome) -> None:
    st = p.status
    if ev.cause == C.REPORT_CAUSE_SAVE_FAILED:
        if st.phase != P.PARTITION_PHASE_SAVING:
            return  # a late duplicate
        st.phase = ev.phase  # type: ignore[assignment]  # the save failed; the guest runs on
        st.reason = ev.reason or "save failed"
        if p.spec.desired_state == P.DESIRED_STATE_SAVED:
            p.spec.desired_state = (P.DESIRED_STATE_PAUSED
                                    if ev.phase == P.PARTITION_PHASE_PAUSED
                                    else P.DESIRED_STATE_RUNNING)
        out.write = True
        out.note("SaveFailed", st.reason, warning=True)
        return
    if st.phase == ev.phase or st.phase in (P.PARTITION_PHASE_STOPPING,
                                            P.PARTITION_PHASE_SAVING):
        return  # nothing new, or a stop/save under way (the agent reports its end)
    starting = st.phase in (P.PARTITION_PHASE_SCHEDULED, P.PARTITION_PHASE_STARTING)
    restored = starting and bool(st.saved_state.digest)
    st.phase = ev.phase  # type: ignore[assignment]
    st.reason = ""
    out.write = True
    if starting:
        st.started_at.CopyFrom(ev.time if ev.time is not None else now)
        st.ClearField("saved_state")  # consumed: the guest continues from it
        out.note("Restored" if restored else "Started",
                 f"{'restored and ' if restored else ''}running on node {ev.node}")
        if ev.phase == P.PARTITION_PHASE_PAUSED:
            out.note("Paused", f"every vCPU stopped on node {ev.node}")
    elif ev.phase == P.PARTITION_PHASE_PAUSED:
        out.note("Paused", f"every vCPU stopped on node {ev.node}")
    else:
        out.note("Resumed", f"running again on node {ev.node}")


def _reported_saved(p: pb.Partition, ev: Reported, out: Outcome) -> None:
    st = p.status
    node = ev.node
    _release(p, out)
    if ev.state is not None:
        st.saved_state.CopyFrom(ev.state)
    size = format_size(ev.state.size_bytes) if ev.state is not None else "?"
    out.note("Saved", f"state written on node {node} ({size})")
    if p.spec.desired_state in WANTS_GUEST and st.phase == P.PARTITION_PHASE_SAVING:
        # Saved to be restored elsewhere (a drain): place it again at once.
        st.phase = P.PARTITION_PHASE_PENDING
        st.reason = f"saved on node {node}; restoring it on another node"
        return
    st.phase = P.PARTITION_PHASE_SAVED
    st.reason = f"state saved on node {node}"
    if p.spec.desired_state != P.DESIRED_STATE_OFF:
        p.spec.desired_state = P.DESIRED_STATE_SAVED


def _reported_ended(p: pb.Partition, ev: Reported, now: Timestamp, out: Outcome) -> None:
    st = p.status
    before = st.phase
    node = ev.node
    _release(p, out)
    st.finished_at.CopyFrom(ev.time if ev.time is not None else now)
    wants = p.spec.desired_state in WANTS_GUEST
    if ev.cause == C.REPORT_CAUSE_FENCED:
        # The node fenced itself (it lost contact); the guest did not fail. Cold start
        # elsewhere if HA, else Lost for the user to start, as for a lost node.
        reason = ev.reason or "fenced"
        if not wants and p.spec.desired_state != P.DESIRED_STATE_SAVED:
            st.phase = P.PARTITION_PHASE_OFF
            st.reason = f"{reason} while stopping"
        elif p.spec.ha:
            p.spec.desired_state = P.DESIRED_STATE_RUNNING
            st.phase = P.PARTITION_PHASE_PENDING
            st.restarts += 1
            st.target_node = ""
            st.reason = f"{reason}; restarting (HA, cold start)"
        else:
            st.phase = P.PARTITION_PHASE_LOST
            st.reason = f"{reason}; start it again to run it"
        out.note("Fenced", st.reason, warning=True)
        return
    stopping = before == P.PARTITION_PHASE_STOPPING
    if stopping and wants:
        # Stopped to be placed again (drain, checkpoint revert): start again.
        st.phase = P.PARTITION_PHASE_PENDING
        st.reason = f"stopped on {node}; placing it again"
        out.note("Rescheduling", st.reason)
        return
    if stopping or ev.cause == C.REPORT_CAUSE_STOPPED:
        st.phase = P.PARTITION_PHASE_OFF
        st.reason = ev.reason if ev.reason and not stopping else "stopped"
        st.has_exit_code = ev.exit_code is not None
        st.exit_code = ev.exit_code or 0
        p.spec.desired_state = P.DESIRED_STATE_OFF  # (a save it was doing did not happen)
        out.note("Stopped", f"stopped on node {node}")
        return
    failed = ev.phase == P.PARTITION_PHASE_FAILED or ev.cause in (
        C.REPORT_CAUSE_FAILED, C.REPORT_CAUSE_NOT_RUNNING)
    reason = ev.reason or ("the node no longer runs it"
                           if ev.cause == C.REPORT_CAUSE_NOT_RUNNING else "")
    st.has_exit_code = ev.exit_code is not None
    st.exit_code = ev.exit_code or 0
    st.reason = reason
    if before == P.PARTITION_PHASE_SAVING and p.spec.desired_state == P.DESIRED_STATE_SAVED:
        p.spec.desired_state = P.DESIRED_STATE_RUNNING  # judged as a plain end below
        out.note("SaveFailed", f"the guest ended before its state was saved on node {node}",
                 warning=True)
    if failed:
        out.note("Failed", f"on node {node}: {reason}", warning=True)
    else:
        out.note("Exited", f"guest exited with code {ev.exit_code} on node {node}")
    if should_restart(p, failed, ev.exit_code or 0):
        st.phase = P.PARTITION_PHASE_PENDING
        st.restarts += 1
        st.reason = f"restarting ({reason or 'exited'})"
        p.spec.desired_state = P.DESIRED_STATE_RUNNING
        out.note("Restarting",
                 f"restart policy {P.RestartPolicy.Name(p.spec.restart_policy)}: restart "
                 f"#{st.restarts} (was {phase_name(before)})")
        return
    st.phase = P.PARTITION_PHASE_FAILED if failed else P.PARTITION_PHASE_OFF
    p.spec.desired_state = P.DESIRED_STATE_OFF  # it ended by itself and stays ended


def _checkpoint_taken(view: View, p: pb.Partition, ev: CheckpointTaken, now: Timestamp,
                      out: Outcome) -> None:
    for i, cp in enumerate(p.status.checkpoints):
        if cp.name != ev.name or cp.state.digest:
            continue
        out.write = True
        if ev.error or ev.state is None:  # the agent could not take it: drop the request
            del p.status.checkpoints[i]
            out.note("CheckpointFailed", f"checkpoint {cp.name}: {ev.error or 'no state'}",
                     warning=True)
            return
        cp.state.CopyFrom(ev.state)
        cp.created_at.CopyFrom(ev.time if ev.time is not None else now)
        out.note("CheckpointCreated",
                 f"checkpoint {cp.name} taken ({format_size(ev.state.size_bytes)})")
        return


# Scheduler, node lifecycle, drain ---------------------------------------------------------

def _placed(view: View, p: pb.Partition, ev: Placed, now: Timestamp, out: Outcome) -> None:
    if view.bound_node or not needs_placement(p, False):
        return  # a stale decision: the compare in the bind transaction fails anyway
    st = p.status
    st.phase = P.PARTITION_PHASE_SCHEDULED
    st.node = ev.node
    st.reason = f"scheduled on {ev.node}"
    st.target_node = ""  # one placement only: a pin never outlives it
    out.bind = ev.node
    out.note("Scheduled", f"placed on node {ev.node}")


def _unplaceable(view: View, p: pb.Partition, ev: Unplaceable, now: Timestamp,
                 out: Outcome) -> None:
    if view.bound_node or not needs_placement(p, False) or p.status.reason == ev.reason:
        return
    p.status.reason = ev.reason
    out.write = True
    out.note("FailedScheduling", ev.reason, warning=True)


def _node_lost(view: View, p: pb.Partition, ev: NodeLost, now: Timestamp,
               out: Outcome) -> None:
    if view.bound_node != ev.node:
        return
    st = p.status
    _release(p, out)
    if st.phase == P.PARTITION_PHASE_STOPPING and p.spec.desired_state not in WANTS_GUEST:
        st.phase = P.PARTITION_PHASE_OFF
        st.reason = f"node {ev.node} lost while stopping it"
        out.note("NodeLost", st.reason, warning=True)
    elif p.spec.ha and p.spec.desired_state != P.DESIRED_STATE_OFF:
        p.spec.desired_state = P.DESIRED_STATE_RUNNING
        st.phase = P.PARTITION_PHASE_PENDING
        st.restarts += 1
        st.target_node = ""
        st.reason = f"node {ev.node} lost; restarting elsewhere (HA, cold start)"
        out.note("HARestart", st.reason, warning=True)
    else:
        st.phase = P.PARTITION_PHASE_LOST
        st.reason = f"node {ev.node} lost; start it again to run it elsewhere"
        out.note("NodeLost", st.reason, warning=True)


def _drain_move(view: View, p: pb.Partition, ev: DrainMove, now: Timestamp,
                out: Outcome) -> None:
    st = p.status
    if view.bound_node != ev.node or st.phase not in (P.PARTITION_PHASE_RUNNING,
                                                      P.PARTITION_PHASE_PAUSED):
        return
    st.phase = P.PARTITION_PHASE_SAVING
    st.target_node = ""
    st.reason = f"draining node {ev.node}: saving to restore elsewhere"
    out.write = True
    out.note("Draining", st.reason)


def _drain_stop(view: View, p: pb.Partition, ev: DrainStop, now: Timestamp,
                out: Outcome) -> None:
    st = p.status
    if view.bound_node != ev.node or st.phase not in HOLDING or st.phase in (
            P.PARTITION_PHASE_STOPPING, P.PARTITION_PHASE_SAVING):
        return
    st.phase = P.PARTITION_PHASE_STOPPING
    st.stop_grace_seconds = 0.0  # Turn Off, as before graceful stops existed
    st.target_node = ""
    st.reason = f"draining node {ev.node}: stopping to place it elsewhere"
    out.write = True
    out.note("Draining", st.reason)


_HANDLERS: dict[type, Callable[..., None]] = {
    Start: _start, Stop: _stop, Pause: _pause, Resume: _resume, Save: _save, Move: _move,
    CheckpointCreate: _checkpoint_create, CheckpointApply: _checkpoint_apply,
    CheckpointDelete: _checkpoint_delete, Delete: _delete, Reported: _reported,
    CheckpointTaken: _checkpoint_taken, Placed: _placed, Unplaceable: _unplaceable,
    NodeLost: _node_lost, DrainMove: _drain_move, DrainStop: _drain_stop,
}
