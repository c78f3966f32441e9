"""Failover between controllers within the lease TTL (real Agent, real gRPC).

Timings with the defaults for TTL 3 s: heartbeat 0.5 s, ack timeout 1 s, fence margin
0.5 s, Register deadline 0.75 s. The contact deadline is the send time of the newest acked
heartbeat (or Register) + 2.5 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from agent_fakes import FakeController, wait_for
from agent_helpers import running_agent

TTL = 3.0
MARGIN = 0.5
FAKES = Path(__file__).with_name("agent_fakes.py")


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def closed_port() -> str:
    """An address nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_frozen_controller_fails_over_before_the_fence(tmp_path: Path) -> None:
    """A SIGSTOPped controller keeps TCP open and answers nothing: the agent must notice
    (ack timeout), register with the next controller and get an ack from it well before
    its contact deadline."""
    frozen = subprocess.Popen([sys.executable, str(FAKES)], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(FAKES.parent)})
    try:
        assert frozen.stdout is not None
        first = f"127.0.0.1:{int(frozen.stdout.readline())}"

        async def scenario() -> None:
            second = FakeController()
            await second.start()
            async with running_agent(tmp_path / "run", [first, second.address]) as agent:
                started = boottime()
                # Acks from the first controller for heartbeats sent well after the start.
                await wait_for(lambda: agent.fence.deadline > started + 1.0 + TTL - MARGIN,
                               "acks from the first controller")
                assert agent.address == first and second.registers == 0
                os.kill(frozen.pid, signal.SIGSTOP)
                frozen_at = boottime()
                old_deadline = agent.fence.deadline
                assert old_deadline <= frozen_at + TTL - MARGIN
                # Only a message sent after the freeze, answered by the second controller,
                # can move the deadline past this.
                renewed_at = await wait_for(
                    lambda: agent.fence.deadline > frozen_at + TTL - MARGIN,
                    "contact with the second controller", timeout=10.0)
                assert agent.address == second.address
                assert second.registers == 1
                assert renewed_at < old_deadline - 0.3, (
                    f"new contact {renewed_at - frozen_at:.2f}s after the freeze, deadline "
                    f"was {old_deadline - frozen_at:.2f}s after it")
                assert renewed_at - frozen_at < 2.0
                assert not agent.fence.fenced
                await wait_for(lambda: bool(second.acked), "an ack from the second")
            await second.stop()

        asyncio.run(scenario())
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.kill()
        frozen.wait()


def test_unacked_heartbeats_move_on_to_the_next_controller(tmp_path: Path) -> None:
    """A controller that answers Register but never acks: after the ack timeout (1 s) the
    agent registers with the next one, long before the deadline its Register set."""

    async def scenario() -> None:
        silent, good = FakeController(acks=False), FakeController()
        await silent.start()
        await good.start()
        async with running_agent(tmp_path / "run", [silent.address, good.address]) as agent:
            await wait_for(lambda: silent.registers == 1, "the first Register")
            registered_at = boottime()
            await wait_for(lambda: bool(good.acked), "an ack from the second controller")
            acked_after = boottime() - registered_at
            assert 0.9 < acked_after < 1.8, acked_after
            assert agent.fence.remaining() > TTL - MARGIN - 0.5
            assert not agent.fence.fenced
            assert silent.heartbeats and not silent.acked
        await silent.stop()
        await good.stop()

    asyncio.run(scenario())


def test_hung_register_times_out_quickly(tmp_path: Path) -> None:
    """Register gets a short deadline (0.75 s for TTL 3), not 5 s."""

    async def scenario() -> None:
        hung, good = FakeController(register_hangs=True), FakeController()
        await hung.start()
        await good.start()
        async with running_agent(tmp_path / "run", [hung.address, good.address]) as agent:
            await wait_for(lambda: hung.registers == 1, "the hanging Register")
            began = boottime()
            await wait_for(lambda: bool(good.acked), "an ack from the second controller",
                           timeout=6.0)
            assert boottime() - began < 1.5
            assert agent.address == good.address
        await hung.stop()
        await good.stop()

    asyncio.run(scenario())


def test_ended_session_moves_on_to_the_next_address(tmp_path: Path) -> None:
    """After an established session ends, the next Register goes to the next address (the
    old code retried the same one)."""

    async def scenario() -> None:
        ending, good = FakeController(end_after_ack=True), FakeController()
        await ending.start()
        await good.start()
        async with running_agent(tmp_path / "run", [ending.address, good.address]) as agent:
            await wait_for(lambda: bool(ending.acked), "the first session's ack")
            await wait_for(lambda: bool(good.acked), "an ack from the second controller",
                           timeout=3.0)
            assert ending.registers == 1
            assert agent.address == good.address
        await ending.stop()
        await good.stop()

    asyncio.run(scenario())


def test_refused_and_stopped_controllers_are_skipped(tmp_path: Path) -> None:
    """Nothing listens on the first address: straight to the second. When the second
    stops, wrap around and back to it once it is back (on the same port)."""

    async def scenario() -> None:
        good = FakeController()
        await good.start()
        port = int(good.address.rsplit(":", 1)[1])
        async with running_agent(tmp_path / "run", [closed_port(), good.address]) as agent:
            await wait_for(lambda: bool(good.acked), "an ack despite the refused first address",
                           timeout=1.5)
            await good.stop()
            await wait_for(lambda: agent.address != good.address, "the session to end")
            back = FakeController()
            await back.start(port)
            await wait_for(lambda: bool(back.acked), "an ack after the controller is back",
                           timeout=5.0)
            assert not agent.fence.fenced
            await back.stop()

    asyncio.run(scenario())


def test_heartbeats_carry_seq_from_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        good = FakeController()
        await good.start()
        async with running_agent(tmp_path / "run", [good.address]):
            await wait_for(lambda: len(good.heartbeats) >= 3, "three heartbeats", timeout=5.0)
        seqs = [hb.seq for _, hb in good.heartbeats]
        assert seqs == list(range(1, len(seqs) + 1))
        assert all(not hb.inventory for _, hb in good.heartbeats)  # nothing runs
        gaps = [b[0] - a[0] for a, b in zip(good.heartbeats, good.heartbeats[1:], strict=False)]
        assert all(0.3 < gap < 0.8 for gap in gaps[1:]), gaps  # every 0.5 s
        await good.stop()

    asyncio.run(scenario())


def test_an_ack_that_asks_for_a_slower_pace_is_followed(tmp_path: Path) -> None:
    """A replica holding many sessions asks, in its acks, for fewer heartbeats: the agent
    beats at the new interval from the next beat on, and its fence is unchanged (acked
    within the TTL, it never fences)."""
    async def scenario() -> None:
        good = FakeController()
        await good.start()
        async with running_agent(tmp_path / "run", [good.address]) as agent:
            await wait_for(lambda: len(good.heartbeats) >= 3, "three heartbeats", timeout=5.0)
            good.pace_ms = 1200
            changed = len(good.heartbeats)
            await wait_for(lambda: len(good.heartbeats) >= changed + 4, "four more beats",
                           timeout=10.0)
            assert not agent.fence.fenced
        times = [t for t, _ in good.heartbeats]
        fast = [b - a for a, b in zip(times[1:changed], times[2:changed], strict=False)]
        # the beat after the first slow ack was already scheduled at the old pace
        slow = [b - a for a, b in zip(times[changed + 1:], times[changed + 2:], strict=False)]
        assert all(0.3 < gap < 0.8 for gap in fast), fast
        assert slow and all(1.1 < gap < 1.5 for gap in slow), slow
        await good.stop()

    asyncio.run(scenario())


def test_the_first_heartbeat_waits_until_the_session_is_accepted(tmp_path: Path) -> None:
    """Heartbeat 1 goes only once the controller accepted the stream (its initial
    metadata), so a slow stream set-up on a busy replica is not taken for an unacked
    heartbeat. A replica that never accepts is left after an ack timeout (1 s), without a
    heartbeat sent to it."""

    async def scenario() -> None:
        busy, good = FakeController(accept_sessions=False), FakeController()
        await busy.start()
        await good.start()
        async with running_agent(tmp_path / "run", [busy.address, good.address]) as agent:
            await wait_for(lambda: busy.registers == 1, "the first Register")
            registered_at = boottime()
            await wait_for(lambda: bool(good.acked), "an ack from the second controller")
            assert 0.9 < boottime() - registered_at < 1.8
            assert not busy.heartbeats   # nothing was sent on a stream not accepted
            assert not agent.fence.fenced
        await busy.stop()
        await good.stop()

    asyncio.run(scenario())


def test_a_replica_slow_to_accept_sessions_gets_the_patience_its_registers_get(
        tmp_path: Path) -> None:
    """A replica that takes 1.3 s to accept a stream (a backlog of new streams after a mass
    reconnect) is given as long as a Register would be, once a round failed: the agent does
    not give up at the ack timeout forever, registering again and adding to the backlog."""

    async def scenario() -> None:
        slow = FakeController(accept_delay=1.3)
        await slow.start()
        async with running_agent(tmp_path / "run", [slow.address]):
            await wait_for(lambda: bool(slow.acked), "an ack from the slow controller",
                           timeout=15)
            assert slow.registers <= 3
        await slow.stop()

    asyncio.run(scenario())


def test_an_agent_refused_by_a_busy_controller_comes_back_when_asked(tmp_path: Path) -> None:
    """A Register refused UNAVAILABLE with a retry hint (the controller is setting up as
    many sessions as it can) is tried again no sooner than the hint, not at once."""

    async def scenario() -> None:
        busy = FakeController(refuse_registers=1, retry_after_ms=1500)
        await busy.start()
        async with running_agent(tmp_path / "run", [busy.address]):
            await wait_for(lambda: busy.registers == 2, "the second Register", timeout=10)
            assert busy.register_times[1] - busy.register_times[0] >= 1.45
            await wait_for(lambda: bool(busy.acked), "an ack")
        await busy.stop()

    asyncio.run(scenario())
