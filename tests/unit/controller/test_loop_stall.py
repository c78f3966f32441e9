"""The stall watch names what held the event loop (controller/loop_lag.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest

from controller.gc_policy import GcPauses
from controller.loop_lag import LoopLagMonitor


def _hold_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)   # the stall under test: synchronous work on the loop thread


def test_a_stalled_loop_is_reported_with_the_stack_that_held_it(
        caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(_stalled(caplog))


async def _stalled(caplog: pytest.LogCaptureFixture) -> None:
    ended: list[tuple[float, str]] = []
    monitor = LoopLagMonitor(lambda _: None, interval=0.02, stall_s=0.2,
                             on_stall=lambda s, stack: ended.append((s, stack)))
    monitor.start()
    try:
        await asyncio.sleep(0.1)
        with caplog.at_level(logging.WARNING, logger="controller.loop_lag"):
            _hold_the_loop_for(0.6)
            deadline = time.monotonic() + 5
            while not ended and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        assert ended, "no stall reported"
        seconds, stack = ended[0]
        assert 0.5 <= seconds < 5
        assert "_hold_the_loop_for" in stack
        assert any("_hold_the_loop_for" in r.getMessage() for r in caplog.records)
        assert monitor.watch is not None and monitor.watch.stalls == 1
    finally:
        await monitor.stop()


def test_a_loop_that_keeps_ticking_reports_no_stall() -> None:
    asyncio.run(_ticking())


async def _ticking() -> None:
    ended: list[tuple[float, str]] = []
    monitor = LoopLagMonitor(lambda _: None, interval=0.02, stall_s=0.2,
                             on_stall=lambda s, stack: ended.append((s, stack)))
    monitor.start()
    try:
        for _ in range(10):
            _hold_the_loop_for(0.05)   # short holds, each well under the threshold
            await asyncio.sleep(0.03)
        assert monitor.watch is not None and monitor.watch.stalls == 0
        assert not ended
    finally:
        await monitor.stop()


def test_a_stall_report_says_what_else_was_going_on() -> None:
    ended: list[tuple[float, str]] = []

    async def main() -> None:
        monitor = LoopLagMonitor(lambda _: None, interval=0.02, stall_s=0.2,
                                 on_stall=lambda s, stack: ended.append((s, stack)),
                                 context=lambda: "a collection of generation 2")
        monitor.start()
        try:
            await asyncio.sleep(0.1)
            _hold_the_loop_for(0.5)
            deadline = time.monotonic() + 5
            while not ended and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            await monitor.stop()

    asyncio.run(main())
    assert ended and ended[0][1].startswith("a collection of generation 2\n")


def test_gc_pauses_say_which_collection_is_running_while_it_runs() -> None:
    pauses = GcPauses(lambda generation, seconds: None)
    seen: list[str] = []

    def during(phase: str, info: dict[str, object]) -> None:
        if phase == "start":
            seen.append(pauses.collecting())

    pauses.install()
    gc.callbacks.append(during)
    try:
        gc.collect(2)
    finally:
        gc.callbacks.remove(during)
        pauses.remove()
    assert seen and seen[0].startswith("a garbage collection of generation 2 has been running")
    assert pauses.collecting() == ""
