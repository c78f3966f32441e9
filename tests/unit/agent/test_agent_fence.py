"""Contact deadline and fencing: send time + TTL - margin on an injected clock, acks
matched by seq, inheritance through the watchdog file, and a real fence of a real
partition when the controllers go silent."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from agent_fakes import FakeClock, FakeController, wait_for
from agent_helpers import Node, image_of, running, running_agent
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.fencing import Fence
from node_agent.runtime.watchdog_file import read_deadline, write_deadline
from node_agent.session import Heartbeats
from node_agent.timing import Timing

TIMING = Timing.for_ttl(3.0)  # heartbeat 0.5, margin 0.5, ack timeout 1.0


class Target:
    """Stands in for the supervisor: records fences."""

    def __init__(self, running: int = 1) -> None:
        self.running = running
        self.reasons: list[str] = []

    def fence(self, reason: str) -> int:
        self.reasons.append(reason)
        stopped, self.running = self.running, 0
        return stopped


def test_defaults_follow_the_ttl() -> None:
    assert (TIMING.ttl, TIMING.heartbeat, TIMING.margin, TIMING.ack_timeout) == \
        (3.0, 0.5, 0.5, 1.0)
    given = Timing.from_reply(apb.RegisterResponse(
        lease_ttl_seconds=6, heartbeat_interval_ms=400, fence_margin_ms=700))
    assert (given.ttl, given.heartbeat, given.margin, given.ack_timeout) == (6.0, 0.4, 0.7, 0.8)
    assert Timing.from_reply(apb.RegisterResponse()).ttl == 3.0
    # Register: short at first, longer after whole rounds failed, capped.
    assert [TIMING.register_timeout(r) for r in range(5)] == [0.75, 1.5, 3.0, 4.0, 4.0]
    assert Timing.for_ttl(1.0).register_timeout(0) == 0.3


def test_heartbeats_are_numbered_and_acks_matched() -> None:
    clock = FakeClock(100.0)
    beats = Heartbeats(clock)
    assert beats.next() == (1, 100.0)
    clock.t = 100.5
    assert beats.next() == (2, 100.5)
    assert beats.ack_due(1.0) == 101.0
    assert beats.acked(7) is None           # never sent
    assert beats.acked(1) == 100.0
    assert beats.acked(1) is None           # answered already: proves nothing new
    assert beats.ack_due(1.0) == 101.5
    assert beats.acked(2) == 100.5
    assert beats.ack_due(1.0) is None


def test_fence_at_send_time_plus_ttl_minus_margin(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    target = Target()
    fence = Fence(target, tmp_path / "watchdog", clock)
    # An ack received at 102.0 for a heartbeat sent at 100.0 counts from 100.0.
    clock.t = 102.0
    assert fence.contact(100.0, TIMING)
    assert fence.deadline == 102.5
    assert read_deadline(tmp_path / "watchdog") == 102.5
    assert not fence.contact(99.0, TIMING)   # never backwards
    assert fence.deadline == 102.5
    clock.t = 102.49
    fence.check()
    assert target.reasons == []
    clock.t = 102.5
    fence.check()
    assert len(target.reasons) == 1 and target.reasons[0].startswith("fenced")
    assert fence.fenced
    fence.contact(102.6, TIMING)
    assert not fence.fenced and fence.deadline == pytest.approx(105.1)


def test_never_contacted_agent_writes_a_deadline_in_the_past(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    fence = Fence(Target(0), tmp_path / "watchdog", clock)
    deadline = read_deadline(tmp_path / "watchdog")
    assert deadline is not None and deadline <= 0.0 < clock.now()
    assert fence.remaining() < 0


def test_restarted_agent_inherits_the_deadline(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    path = tmp_path / "watchdog"
    write_deadline(path, 101.0, 3.0)
    target = Target()
    fence = Fence(target, path, clock)
    assert fence.deadline == 101.0 and fence.ttl == 3.0
    clock.t = 100.99
    fence.check()
    assert target.reasons == []
    clock.t = 101.0
    fence.check()
    assert target.reasons and target.reasons[0].startswith("fenced")


def test_inherited_deadline_is_sane(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    path = tmp_path / "watchdog"
    write_deadline(path, 5000.0, 3.0)       # more than a TTL ahead: cannot be right
    assert Fence(Target(), path, clock).deadline == 103.0
    path.write_text(json.dumps({"deadline": 5000.0, "ttl": 3.0, "boot_id": "another boot"}))
    assert Fence(Target(), path, clock).remaining() < 0


def test_acks_extend_from_the_acked_heartbeats_send_time(tmp_path: Path) -> None:
    """End to end with a fake clock: the agent only sends a heartbeat when the clock says
    so, and the controller answers old heartbeats late."""
    clock = FakeClock(100.0)

    async def scenario() -> None:
        ctl = FakeController(acks=False)
        await ctl.start()
        async with running_agent(tmp_path / "run", [ctl.address], clock=clock) as agent:
            fence = agent.fence
            await wait_for(lambda: fence.deadline == 102.5, "the Register's contact")
            await wait_for(lambda: len(ctl.heartbeats) == 1, "heartbeat 1 (sent at 100)")
            clock.t = 100.6
            await wait_for(lambda: len(ctl.heartbeats) == 2, "heartbeat 2 (sent at 100.6)")
            clock.t = 100.9  # both still within their ack timeout
            ctl.ack(1)  # received now, answers the heartbeat sent at 100.0
            await asyncio.sleep(0.2)
            assert fence.deadline == 102.5, "an ack counts from its heartbeat's send time"
            ctl.ack(1)
            ctl.ack(99)  # never sent
            await asyncio.sleep(0.2)
            assert fence.deadline == 102.5
            ctl.ack(2)
            await wait_for(lambda: fence.deadline == pytest.approx(103.1), "ack 2")
            assert read_deadline(tmp_path / "run" / "workers" / "watchdog") == \
                pytest.approx(103.1)
            assert [hb.seq for _, hb in ctl.heartbeats] == [1, 2]
        await ctl.stop()

    asyncio.run(scenario())


def test_silent_controllers_fence_a_running_partition(tmp_path: Path, guest_bins: Path) -> None:
    """Real agent, real worker: the controller assigns a partition, then neither acks nor
    answers Register. At the deadline the partition is stopped; its report says FENCED and
    reaches the controller in the next Register."""

    async def scenario() -> None:
        image, content = image_of(guest_bins / "worker_stdin")
        ctl = FakeController(images={image.digest: content})
        await ctl.start()
        async with running_agent(tmp_path / "run", [ctl.address]) as agent:
            await wait_for(lambda: ctl.in_session and bool(ctl.acked), "a session")
            ctl.send(apb.ControllerMessage(assign=apb.Assignment(
                name="p", epoch=4, image=image, spec=pb.PartitionSpec(stdin=True))))
            await wait_for(lambda: any(r.phase == pb.PARTITION_PHASE_RUNNING
                                       for r in ctl.reports), "the partition to run")
            await wait_for(lambda: [(e.name, e.epoch) for e in
                                    ctl.heartbeats[-1][1].inventory] == [("p", 4)],
                           "the partition in the inventory")
            ctl.acks, ctl.register_hangs = False, True
            silent_at = time.clock_gettime(time.CLOCK_BOOTTIME)
            deadline = agent.fence.deadline
            assert deadline <= silent_at + 2.5
            lp = agent.supervisor.local["p"]
            fenced_at = await wait_for(lambda: lp.report.cause == apb.REPORT_CAUSE_FENCED,
                                       "the fence", timeout=6.0)
            assert deadline <= fenced_at < deadline + 1.0
            assert lp.report.phase == pb.PARTITION_PHASE_FAILED
            assert lp.report.reason.startswith("fenced")
            assert agent.supervisor.inventory() == []
            ctl.acks, ctl.register_hangs = True, False
            await wait_for(lambda: any(
                r.name == "p" and r.cause == apb.REPORT_CAUSE_FENCED
                for r in ctl.register_requests[-1].running), "the fenced report", 6.0)
        await ctl.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("reconnects", [True, False], ids=["reconnects", "cut-off"])
def test_restarted_agent_keeps_or_fences_adopted_partitions(tmp_path: Path, guest_bins: Path,
                                                            reconnects: bool) -> None:
    """An agent restarts while its partition runs. It inherits the deadline from the
    watchdog file: reconnected in time, the partition runs on past it; cut off, the
    partition is fenced at that same deadline."""

    async def scenario() -> None:
        run_dir = tmp_path / "run"
        watchdog = run_dir / "workers" / "watchdog"
        watchdog.parent.mkdir(parents=True)
        write_deadline(watchdog, time.clock_gettime(time.CLOCK_BOOTTIME) + 30.0, 3.0)
        first = Node(run_dir, guest_bins)
        await first.sup.start()
        await running(first, "p")
        inherited = time.clock_gettime(time.CLOCK_BOOTTIME) + 1.5
        write_deadline(watchdog, inherited, 3.0)  # the old agent's last contact
        await first.sup.close()  # it dies; the worker runs on

        ctl = FakeController()
        await ctl.start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            nowhere = f"127.0.0.1:{s.getsockname()[1]}"
        async with running_agent(run_dir, [ctl.address if reconnects else nowhere]) as agent:
            await wait_for(lambda: "p" in agent.supervisor.local, "the adoption")
            lp = agent.supervisor.local["p"]
            assert lp.report.phase == pb.PARTITION_PHASE_RUNNING
            if reconnects:
                await wait_for(lambda: any(("p", 1) == (e.name, e.epoch)
                                           for _, hb in ctl.heartbeats for e in hb.inventory),
                               "the adopted partition in a heartbeat's inventory")
                await wait_for(lambda: time.clock_gettime(time.CLOCK_BOOTTIME) >
                               inherited + 0.5, "the inherited deadline to pass", 5.0)
                assert lp.report.phase == pb.PARTITION_PHASE_RUNNING
                assert lp.handle is not None and lp.handle.poll() is None
                assert [r.name for r in ctl.register_requests[0].running] == ["p"]
            else:
                assert agent.fence.deadline == inherited
                fenced_at = await wait_for(lambda: lp.report.cause == apb.REPORT_CAUSE_FENCED,
                                           "the fence", 5.0)
                assert inherited <= fenced_at < inherited + 1.0
                assert lp.handle is not None and lp.handle.poll() is not None
        await ctl.stop()

    asyncio.run(scenario())
