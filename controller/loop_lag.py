"""How late the event loop runs what is due, and what held it when it was stuck.

A replica serves every agent session, every API call and every watch on one asyncio loop;
when the loop is busy, heartbeat acks wait in its queue however fast etcd answers. The lag
(a task asks to wake every `interval` and records by how much it woke late) is the figure
that tells a loop-bound replica from an etcd-bound one.

A lag figure says that the loop was held, not by what. A stall watch (a thread, so it runs
while the loop cannot) looks at when the loop last ticked; once it has not ticked for
`stall_s`, it takes the loop thread's stack (sys._current_frames) and logs it once for that
stall, then logs how long the stall lasted when the loop ticks again. A stall longer than
an agent's ack timeout is what makes agents leave a healthy replica, so the stack is the
thing to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

__all__ = ["LoopLagMonitor", "StallWatch"]

log = logging.getLogger(__name__)
INTERVAL_S = 0.1
STALL_S = 0.5
#: innermost frames of a stalled loop's stack put in the log
STACK_FRAMES = 14


class StallWatch:
    """A thread that reports when the loop (whose thread is `thread_id`) has not ticked
    for `stall_s`: the loop thread's stack once per stall, and the stall's length."""

    def __init__(self, thread_id: int, stall_s: float = STALL_S,
                 on_stall: Callable[[float, str], None] | None = None,
                 context: Callable[[], str] = lambda: "") -> None:
        self.thread_id = thread_id
        self.stall_s = stall_s
        self.on_stall = on_stall   # (seconds, stack) when a reported stall ends
        self.context = context     # what else to say (e.g. a garbage collection running)
        self.last_tick = time.monotonic()
        self.stalls = 0            # stalls reported (for tests and metrics)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stack = ""           # of the stall in progress ("" = none reported)

    def tick(self) -> None:
        """The loop ran: called from the loop thread."""
        now = time.monotonic()
        if self._stack:
            seconds, stack = now - self.last_tick, self._stack
            self._stack = ""
            log.warning("event loop stall ended after %.2fs", seconds)
            if self.on_stall is not None:
                self.on_stall(seconds, stack)
        self.last_tick = now

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loop-stall-watch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        period = self.stall_s / 4
        while not self._stop.wait(period):
            since = time.monotonic() - self.last_tick
            if since < self.stall_s or self._stack:
                continue
            frame = sys._current_frames().get(self.thread_id)
            if frame is None:
                continue
            stack = "".join(traceback.format_stack(frame)[-STACK_FRAMES:])
            if time.monotonic() - self.last_tick < self.stall_s:
                continue   # the loop ticked while the stack was taken: not this stall
            also = self.context()
            self._stack = f"{also}\n{stack}" if also else stack
            self.stalls += 1
            log.warning("event loop stalled for %.2fs so far%s; the loop thread is in:\n%s",
                        since, f" ({also})" if also else "", stack)


class LoopLagMonitor:
    def __init__(self, observe: Callable[[float], None], interval: float = INTERVAL_S,
                 stall_s: float = STALL_S,
                 on_stall: Callable[[float, str], None] | None = None,
                 context: Callable[[], str] = lambda: "") -> None:
        self.observe = observe
        self.interval = interval
        self.stall_s = stall_s
        self.on_stall = on_stall
        self.context = context
        self.watch: StallWatch | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.watch = StallWatch(threading.get_ident(), self.stall_s, self.on_stall,
                                self.context)
        self.watch.start()
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.watch is not None:
            self.watch.stop()
            self.watch = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            if self.watch is not None:
                self.watch.tick()
            self.observe(max(0.0, loop.time() - due))
