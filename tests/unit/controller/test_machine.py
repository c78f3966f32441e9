"""The partition state machine, table-driven: every (phase, desired state, event), checked
against the invariants, plus the expected outcome of the transitions that matter."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.errors import ViridianError
from controller.partitions.machine import (
    HOLDING,
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
    Pause,
    Placed,
    Reported,
    Resume,
    Save,
    Start,
    Stop,
    Unplaceable,
    View,
    needs_placement,
    phase_name,
    transition,
    wanted_command,
)

P = pb
C = apb.ReportCause
NOW = Timestamp(seconds=1000)
NODE = "node-1"
EPOCH = 42
PHASES = [v for v in P.PartitionPhase.values() if v]
DESIRED = [v for v in P.DesiredState.values() if v]
STATE = pb.StateRef(node=NODE, digest="sha256:" + "a" * 64, size_bytes=1 << 20)
CP_STATE = pb.StateRef(node=NODE, digest="sha256:" + "b" * 64, size_bytes=1 << 20)

EVENTS: list[Event] = [
    Start(), Start("node-2"), Stop(), Pause(), Resume(), Save(), Move("node-2"),
    CheckpointCreate("new"), CheckpointApply("cp"), CheckpointApply("blank"),
    CheckpointDelete("cp"), CheckpointDelete("missing"), Delete(), Delete(force=True),
    CheckpointTaken("pending", CP_STATE), CheckpointTaken("pending", error="disk full"),
    Placed(NODE), Unplaceable("0/3 nodes available"), NodeLost(NODE), NodeLost("node-9"),
    DrainMove(NODE), DrainStop(NODE),
    *[Reported(NODE, ph, cause, code, "why", state)
      for ph, cause, code, state in [
          (P.PARTITION_PHASE_STARTING, C.REPORT_CAUSE_UNSPECIFIED, None, None),
          (P.PARTITION_PHASE_RUNNING, C.REPORT_CAUSE_UNSPECIFIED, None, None),
          (P.PARTITION_PHASE_PAUSED, C.REPORT_CAUSE_UNSPECIFIED, None, None),
          (P.PARTITION_PHASE_RUNNING, C.REPORT_CAUSE_SAVE_FAILED, None, None),
          (P.PARTITION_PHASE_SAVED, C.REPORT_CAUSE_UNSPECIFIED, None, STATE),
          (P.PARTITION_PHASE_OFF, C.REPORT_CAUSE_EXITED, 0, None),
          (P.PARTITION_PHASE_OFF, C.REPORT_CAUSE_EXITED, 3, None),
          (P.PARTITION_PHASE_OFF, C.REPORT_CAUSE_STOPPED, 143, None),
          (P.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FAILED, None, None),
          (P.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FENCED, None, None),
          (P.PARTITION_PHASE_OFF, C.REPORT_CAUSE_NOT_RUNNING, None, None),
      ]],
]


def partition(phase: int, desired: int, ha: bool = False, policy: int = 0,
              target: str = "", saved: bool = False) -> pb.Partition:
    p = pb.Partition(name="p", spec=pb.PartitionSpec(
        image="img", vcpus=1, memory_bytes=64 << 20, ha=ha,
        restart_policy=policy,  # type: ignore[arg-type]
        desired_state=desired))  # type: ignore[arg-type]
    st = p.status
    st.phase = phase  # type: ignore[assignment]
    st.target_node = target
    if saved:
        st.saved_state.CopyFrom(STATE)
    st.checkpoints.append(pb.Checkpoint(name="cp", state=CP_STATE,
                                        taken_in=P.PARTITION_PHASE_RUNNING))
    st.checkpoints.append(pb.Checkpoint(name="blank", taken_in=P.PARTITION_PHASE_OFF))
    st.checkpoints.append(pb.Checkpoint(name="pending", taken_in=P.PARTITION_PHASE_RUNNING))
    return p


def view(p: pb.Partition) -> View:
    """Bound exactly while holding: the invariant every stored partition satisfies."""
    bound = p.status.phase in HOLDING
    return View(p, NODE if bound else "", EPOCH if bound else 0)


WANTS = {P.DESIRED_STATE_RUNNING, P.DESIRED_STATE_PAUSED}
# The (phase, desired state) pairs a stored partition can be in: written down here, apart
# from the machine, so that the sweep below checks the machine never leaves them.
WELL_FORMED: dict[int, set[int]] = {
    P.PARTITION_PHASE_PENDING: WANTS,
    P.PARTITION_PHASE_SCHEDULED: WANTS,
    P.PARTITION_PHASE_STARTING: WANTS,
    P.PARTITION_PHASE_RUNNING: WANTS,
    P.PARTITION_PHASE_PAUSED: WANTS,
    P.PARTITION_PHASE_SAVING: WANTS | {P.DESIRED_STATE_SAVED},
    P.PARTITION_PHASE_STOPPING: WANTS | {P.DESIRED_STATE_OFF},
    P.PARTITION_PHASE_SAVED: {P.DESIRED_STATE_SAVED, P.DESIRED_STATE_OFF},
    P.PARTITION_PHASE_OFF: {P.DESIRED_STATE_OFF},
    P.PARTITION_PHASE_FAILED: {P.DESIRED_STATE_OFF},
    P.PARTITION_PHASE_LOST: set(DESIRED),
}


def ev_id(ev: Event) -> str:
    return repr(ev).replace(" ", "")[:80]


# -- every (phase, desired, event) --------------------------------------------------------

def test_the_table_of_well_formed_states_covers_every_phase() -> None:
    assert set(WELL_FORMED) == set(PHASES)


@pytest.mark.parametrize("event", EVENTS, ids=ev_id)
def test_every_phase_and_desired_state_keeps_the_invariants(event: Event) -> None:
    """Every (phase, desired state) pair, HA or not: the machine refuses with a domain
    error or returns an outcome that keeps bound <=> holding, never mutates its input,
    and — from a well-formed state — never leaves the well-formed states."""
    for phase, desired, ha in itertools.product(PHASES, DESIRED, (False, True)):
        p = partition(phase, desired, ha=ha, saved=phase == P.PARTITION_PHASE_SAVED)
        before = pb.Partition()
        before.CopyFrom(p)
        v = view(p)
        where = f"{phase_name(phase)}/{P.DesiredState.Name(desired)}/ha={ha}"
        try:
            out = transition(v, event, NOW)  # checks bound <=> HOLDING itself
        except ViridianError:
            assert p == before, f"{where}: refused, but the input changed"
            continue
        assert p == before, f"{where}: the input partition was modified"
        q = out.partition
        assert q.status.phase in PHASES, where
        assert q.spec.desired_state in DESIRED, where
        if not out.write:
            assert q == before, f"{where}: changed without a write"
            continue
        assert q.status.updated_at == NOW, where
        if out.bind:
            assert needs_placement(p, bound=False) and not v.bound_node, where
            assert q.status.phase == P.PARTITION_PHASE_SCHEDULED and not q.status.target_node
        if out.release:
            assert v.bound_node, f"{where}: released what was not bound"
        if v.bound_node and q.status.phase not in HOLDING and not out.delete:
            assert out.release, f"{where}: left {phase_name(phase)} without releasing"
        if desired in WELL_FORMED[phase] and not out.delete:
            assert q.spec.desired_state in WELL_FORMED[q.status.phase], (
                f"{where}: {type(event).__name__} made {phase_name(q.status.phase)}/"
                f"{P.DesiredState.Name(q.spec.desired_state)}")
        if isinstance(event, Reported) and event.cause == C.REPORT_CAUSE_FENCED \
                and q.status.phase == P.PARTITION_PHASE_PENDING:
            assert ha, f"{where}: a fenced partition restarts only when HA"


# -- what the transitions that matter do -------------------------------------------------

@dataclass(frozen=True)
class Row:
    phase: int
    desired: int
    event: Event
    want_phase: int
    want_desired: int
    release: bool = False
    note: str = ""
    ha: bool = False
    policy: int = 0


R, OFF, SAVED, PAUSED = (P.DESIRED_STATE_RUNNING, P.DESIRED_STATE_OFF,
                         P.DESIRED_STATE_SAVED, P.DESIRED_STATE_PAUSED)
PH = P
ROWS = [
    Row(PH.PARTITION_PHASE_OFF, OFF, Start(), PH.PARTITION_PHASE_PENDING, R,
        note="StartRequested"),
    Row(PH.PARTITION_PHASE_SAVED, SAVED, Start(), PH.PARTITION_PHASE_PENDING, R),
    Row(PH.PARTITION_PHASE_LOST, R, Start(), PH.PARTITION_PHASE_PENDING, R),
    Row(PH.PARTITION_PHASE_RUNNING, R, Start(), PH.PARTITION_PHASE_RUNNING, R),
    Row(PH.PARTITION_PHASE_PENDING, R, Stop(), PH.PARTITION_PHASE_OFF, OFF,
        note="StopRequested"),
    Row(PH.PARTITION_PHASE_RUNNING, R, Stop(), PH.PARTITION_PHASE_STOPPING, OFF),
    Row(PH.PARTITION_PHASE_SAVED, SAVED, Stop(), PH.PARTITION_PHASE_SAVED, OFF),
    Row(PH.PARTITION_PHASE_RUNNING, R, Pause(), PH.PARTITION_PHASE_RUNNING, PAUSED),
    Row(PH.PARTITION_PHASE_PAUSED, PAUSED, Resume(), PH.PARTITION_PHASE_PAUSED, R),
    Row(PH.PARTITION_PHASE_RUNNING, R, Save(), PH.PARTITION_PHASE_SAVING, SAVED),
    Row(PH.PARTITION_PHASE_SAVING, R, Save(), PH.PARTITION_PHASE_SAVING, SAVED),
    Row(PH.PARTITION_PHASE_RUNNING, R, Delete(force=True), PH.PARTITION_PHASE_RUNNING, R,
        release=True, note="Deleted"),
    Row(PH.PARTITION_PHASE_PENDING, R, Placed(NODE), PH.PARTITION_PHASE_SCHEDULED, R,
        note="Scheduled"),
    Row(PH.PARTITION_PHASE_SCHEDULED, R,
        Reported(NODE, PH.PARTITION_PHASE_STARTING), PH.PARTITION_PHASE_STARTING, R),
    Row(PH.PARTITION_PHASE_STARTING, R,
        Reported(NODE, PH.PARTITION_PHASE_RUNNING), PH.PARTITION_PHASE_RUNNING, R,
        note="Started"),
    Row(PH.PARTITION_PHASE_RUNNING, PAUSED,
        Reported(NODE, PH.PARTITION_PHASE_PAUSED), PH.PARTITION_PHASE_PAUSED, PAUSED,
        note="Paused"),
    # A user's save ends Saved; a drain's save (desired still Running) is placed again.
    Row(PH.PARTITION_PHASE_SAVING, SAVED,
        Reported(NODE, PH.PARTITION_PHASE_SAVED, state=STATE), PH.PARTITION_PHASE_SAVED,
        SAVED, release=True, note="Saved"),
    Row(PH.PARTITION_PHASE_SAVING, R,
        Reported(NODE, PH.PARTITION_PHASE_SAVED, state=STATE), PH.PARTITION_PHASE_PENDING,
        R, release=True, note="Saved"),
    Row(PH.PARTITION_PHASE_SAVING, SAVED,
        Reported(NODE, PH.PARTITION_PHASE_RUNNING, C.REPORT_CAUSE_SAVE_FAILED, reason="x"),
        PH.PARTITION_PHASE_RUNNING, R, note="SaveFailed"),
    # Without the SAVE_FAILED cause a Running report during a save changes nothing (a
    # duplicate after a session handover must not flip the save back).
    Row(PH.PARTITION_PHASE_SAVING, SAVED, Reported(NODE, PH.PARTITION_PHASE_RUNNING),
        PH.PARTITION_PHASE_SAVING, SAVED),
    Row(PH.PARTITION_PHASE_STOPPING, OFF,
        Reported(NODE, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_STOPPED, 143),
        PH.PARTITION_PHASE_OFF, OFF, release=True, note="Stopped"),
    Row(PH.PARTITION_PHASE_STOPPING, R,  # a checkpoint revert or a drain's stop
        Reported(NODE, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_STOPPED, 143),
        PH.PARTITION_PHASE_PENDING, R, release=True, note="Rescheduling"),
    Row(PH.PARTITION_PHASE_RUNNING, R,
        Reported(NODE, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_EXITED, 0),
        PH.PARTITION_PHASE_OFF, OFF, release=True, note="Exited"),
    Row(PH.PARTITION_PHASE_RUNNING, R,
        Reported(NODE, PH.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FAILED, reason="fault"),
        PH.PARTITION_PHASE_FAILED, OFF, release=True, note="Failed"),
    Row(PH.PARTITION_PHASE_RUNNING, R,
        Reported(NODE, PH.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FAILED, reason="fault"),
        PH.PARTITION_PHASE_PENDING, R, release=True, note="Restarting",
        policy=P.RESTART_POLICY_ON_FAILURE),
    Row(PH.PARTITION_PHASE_RUNNING, R,
        Reported(NODE, PH.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_NOT_RUNNING),
        PH.PARTITION_PHASE_FAILED, OFF, release=True, note="Failed"),
    Row(PH.PARTITION_PHASE_STOPPING, OFF,
        Reported(NODE, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_NOT_RUNNING),
        PH.PARTITION_PHASE_OFF, OFF, release=True, note="Stopped"),
    Row(PH.PARTITION_PHASE_RUNNING, R,
        Reported(NODE, PH.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FENCED, reason="fenced"),
        PH.PARTITION_PHASE_LOST, R, release=True, note="Fenced"),
    Row(PH.PARTITION_PHASE_RUNNING, R,
        Reported(NODE, PH.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FENCED, reason="fenced"),
        PH.PARTITION_PHASE_PENDING, R, release=True, note="Fenced", ha=True),
    Row(PH.PARTITION_PHASE_RUNNING, R, NodeLost(NODE), PH.PARTITION_PHASE_LOST, R,
        release=True, note="NodeLost"),
    Row(PH.PARTITION_PHASE_PAUSED, PAUSED, NodeLost(NODE), PH.PARTITION_PHASE_PENDING, R,
        release=True, note="HARestart", ha=True),
    Row(PH.PARTITION_PHASE_STOPPING, OFF, NodeLost(NODE), PH.PARTITION_PHASE_OFF, OFF,
        release=True, note="NodeLost", ha=True),
    Row(PH.PARTITION_PHASE_RUNNING, R, NodeLost("node-9"), PH.PARTITION_PHASE_RUNNING, R),
    Row(PH.PARTITION_PHASE_RUNNING, R, DrainMove(NODE), PH.PARTITION_PHASE_SAVING, R,
        note="Draining"),
    Row(PH.PARTITION_PHASE_STARTING, R, DrainStop(NODE), PH.PARTITION_PHASE_STOPPING, R,
        note="Draining"),
    Row(PH.PARTITION_PHASE_RUNNING, R, CheckpointApply("cp"), PH.PARTITION_PHASE_STOPPING,
        R, note="CheckpointApplied"),
    Row(PH.PARTITION_PHASE_OFF, OFF, CheckpointApply("cp"), PH.PARTITION_PHASE_SAVED, SAVED,
        note="CheckpointApplied"),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{phase_name(r.phase)}-"
                         f"{P.DesiredState.Name(r.desired)[14:]}-{ev_id(r.event)[:40]}")
def test_transition_table(row: Row) -> None:
    p = partition(row.phase, row.desired, ha=row.ha, policy=row.policy)
    out = transition(view(p), row.event, NOW)
    q = out.partition
    assert (phase_name(q.status.phase), P.DesiredState.Name(q.spec.desired_state)) == (
        phase_name(row.want_phase), P.DesiredState.Name(row.want_desired))
    assert out.release is row.release
    if row.note:
        assert row.note in [n.reason for n in out.notes], out.notes


@pytest.mark.parametrize("phase", [PH.PARTITION_PHASE_RUNNING, PH.PARTITION_PHASE_PAUSED,
                                   PH.PARTITION_PHASE_SAVING])
def test_moving_a_live_partition_is_refused_with_the_recipe(phase: int) -> None:
    with pytest.raises(ViridianError, match="live migration is not supported.*viridian save"):
        transition(view(partition(phase, R)), Move("node-2"), NOW)


def test_a_pin_lasts_one_placement_and_never_survives_failover() -> None:
    """move/start --node target a node for the next placement only: once bound, an HA
    partition whose node is lost may restart anywhere (defect: the pin was a permanent
    selector, so an HA partition moved once never failed over)."""
    p = partition(PH.PARTITION_PHASE_OFF, OFF)
    moved = transition(view(p), Move("node-2"), NOW).partition
    assert moved.status.target_node == "node-2"
    started = transition(view(moved), Start(), NOW).partition
    assert started.status.target_node == "node-2" and not started.spec.node
    placed = transition(View(started), Placed("node-2"), NOW)
    assert placed.bind == "node-2" and placed.partition.status.target_node == ""
    running = placed.partition
    running.status.phase = PH.PARTITION_PHASE_RUNNING
    running.spec.ha = True
    lost = transition(View(running, "node-2", 9), NodeLost("node-2"), NOW).partition
    assert lost.status.phase == PH.PARTITION_PHASE_PENDING and not lost.status.target_node


@pytest.mark.parametrize(
    ("policy", "phase", "cause", "code", "restart", "want"),
    [
        (P.RESTART_POLICY_NEVER, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_EXITED, 0, False,
         PH.PARTITION_PHASE_OFF),
        (P.RESTART_POLICY_NEVER, PH.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FAILED, None,
         False, PH.PARTITION_PHASE_FAILED),
        (P.RESTART_POLICY_ON_FAILURE, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_EXITED, 0, False,
         PH.PARTITION_PHASE_OFF),
        (P.RESTART_POLICY_ON_FAILURE, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_EXITED, 3, True,
         PH.PARTITION_PHASE_PENDING),
        (P.RESTART_POLICY_ON_FAILURE, PH.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FAILED, None,
         True, PH.PARTITION_PHASE_PENDING),
        (P.RESTART_POLICY_ALWAYS, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_EXITED, 0, True,
         PH.PARTITION_PHASE_PENDING),
    ],
    ids=["never-ok", "never-failed", "onfail-ok", "onfail-nonzero", "onfail-failed",
         "always-ok"],
)
def test_restart_policy(policy: int, phase: int, cause: int, code: int | None,
                        restart: bool, want: int) -> None:
    p = partition(PH.PARTITION_PHASE_RUNNING, R, policy=policy)
    out = transition(view(p), Reported(NODE, phase, cause, code, "why",
                                       time=Timestamp(seconds=5)), NOW)
    q = out.partition
    assert q.status.phase == want and out.release
    assert q.status.restarts == (1 if restart else 0)
    assert q.status.has_exit_code == (code is not None)
    assert q.status.finished_at.seconds == 5
    # A partition that ended for good is not wanted running any more.
    assert q.spec.desired_state == (R if restart else OFF)
    assert needs_placement(q, bound=False) is restart


def test_stopped_partition_never_restarts() -> None:
    p = partition(PH.PARTITION_PHASE_STOPPING, OFF, policy=P.RESTART_POLICY_ALWAYS)
    out = transition(view(p), Reported(NODE, PH.PARTITION_PHASE_OFF, C.REPORT_CAUSE_STOPPED,
                                       143), NOW)
    assert out.partition.status.phase == PH.PARTITION_PHASE_OFF


@pytest.mark.parametrize(("phase", "desired", "want"), [
    (PH.PARTITION_PHASE_STOPPING, OFF, apb.PartitionCommand.KIND_STOP),
    (PH.PARTITION_PHASE_SAVING, R, apb.PartitionCommand.KIND_SAVE),
    (PH.PARTITION_PHASE_SAVING, SAVED, apb.PartitionCommand.KIND_SAVE),
    (PH.PARTITION_PHASE_RUNNING, PAUSED, apb.PartitionCommand.KIND_PAUSE),
    (PH.PARTITION_PHASE_PAUSED, R, apb.PartitionCommand.KIND_RESUME),
    (PH.PARTITION_PHASE_RUNNING, R, None),
    (PH.PARTITION_PHASE_SCHEDULED, R, None),
])
def test_wanted_command(phase: int, desired: int, want: int | None) -> None:
    assert wanted_command(partition(phase, desired)) == want


def test_phase_names_are_short() -> None:
    assert phase_name(P.PARTITION_PHASE_RUNNING) == "Running"
    assert phase_name(P.PARTITION_PHASE_LOST) == "Lost"
