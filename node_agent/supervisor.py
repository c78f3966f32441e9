"""The partitions this node runs: launch through the worker manager, watch them end, stop and
forget them, serve their consoles. Reports go out through a callback (the session)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.images import ImageCache
from node_agent.runtime.spec import ExitStatus, PartitionSpec
from node_agent.runtime.workers import WorkerError, WorkerHandle, WorkerManager
from node_agent.states import StateStore
from node_agent.supervisor_states import PullState, StateOps

log = logging.getLogger(__name__)
P = pb
POLL_S = 0.02
CONSOLE_CHUNK = 256 << 10
STOP_GRACE_S = 3.0
Pull = Callable[[pb.Image], Awaitable[bytes]]
K = apb.PartitionCommand
NORMAL_EVENTS = frozenset({"Restored", "Saved", "Paused", "Resumed", "Checkpoint"})
Send = Callable[[apb.AgentMessage], None]


@dataclass
class Local:
    name: str
    epoch: int
    handle: WorkerHandle | None = None
    report: apb.PartitionReport = field(default_factory=apb.PartitionReport)
    events_sent: int = 0
    stopping: bool = False
    saving: bool = False
    fenced: str = ""
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.report.phase in (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING,
                                     P.PARTITION_PHASE_PAUSED)


class Supervisor(StateOps):
    def __init__(self, run_dir: Path, images: ImageCache, pull: Pull,
                 pull_state: PullState, node: str) -> None:
        self.run_dir = run_dir
        self.node = node
        self.states = StateStore(run_dir / "states")
        self._pull_state = pull_state
        self.layers = run_dir / "layers"
        self.layers.mkdir(parents=True, exist_ok=True)
        self.workers = WorkerManager(run_dir / "workers")
        self.images = images
        self._pull = pull
        self.local: dict[str, Local] = {}
        self.send: Send = lambda msg: None
        self._monitor: asyncio.Task[None] | None = None
        self._image_locks: dict[str, asyncio.Lock] = {}

    # -- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.workers.start_forkserver)
        for handle in await asyncio.to_thread(self.workers.adopt):
            lp = Local(handle.name, handle.epoch, handle)
            status = handle.poll()
            if status is None:
                self._set(lp, P.PARTITION_PHASE_RUNNING, "re-adopted after an agent restart")
            else:
                self._finish(lp, status, announce=False)
            self.local[lp.name] = lp
            log.info("re-adopted %s (epoch %d): %s", lp.name, lp.epoch,
                     P.PartitionPhase.Name(lp.report.phase))
        self._monitor = asyncio.create_task(self._watch(), name="worker-monitor")

    async def close(self) -> None:
        if self._monitor:
            self._monitor.cancel()
        await asyncio.to_thread(self.workers.close)

    def reports(self) -> list[apb.PartitionReport]:
        return [lp.report for lp in self.local.values() if lp.report.name]

    def running_count(self) -> int:
        return sum(1 for lp in self.local.values() if lp.running)

    # -- reports -------------------------------------------------------------------------

    def _finish(self, lp: Local, status: ExitStatus, announce: bool = True) -> None:
        if lp.fenced:
            self._set(lp, P.PARTITION_PHASE_FAILED, lp.fenced)
        elif status.failed_reason:
            self._set(lp, P.PARTITION_PHASE_FAILED, status.failed_reason)
        else:
            reason = "stopped by request" if lp.stopping else "guest exited"
            self._set(lp, P.PARTITION_PHASE_OFF, reason, status.exit_code)
        if announce:
            self._forward_events(lp)
            self._announce(lp)

    def _forward_events(self, lp: Local) -> None:
        if lp.handle is None:
            return
        try:
            events = lp.handle.events()
        except OSError:
            return
        for reason, message in events[lp.events_sent :]:
            kind = "Normal" if reason in NORMAL_EVENTS else "Warning"
            self.send(apb.AgentMessage(event=apb.AgentEvent(
                partition=lp.name, type=kind, reason=reason, message=message)))
        lp.events_sent = len(events)

    async def _watch(self) -> None:
        """Notice guests that ended (poll is a cheap file/pid check) and forward events."""
        tick = 0
        while True:
            await asyncio.sleep(POLL_S)
            tick += 1
            for lp in list(self.local.values()):
                if lp.handle is None or not lp.running or lp.saving:
                    continue
                status = lp.handle.poll()
                if status is not None:
                    self._finish(lp, status)
                elif tick % 25 == 0:
                    self._forward_events(lp)

    # -- commands ------------------------------------------------------------------------

    def assign(self, a: apb.Assignment) -> None:
        lp = self.local.get(a.name)
        if lp is not None and lp.epoch == a.epoch:
            self._announce(lp)  # already ours: say where it is
            return
        if lp is not None and lp.running:
            log.warning("%s: assignment epoch %d while epoch %d runs; stopping the old one",
                        a.name, a.epoch, lp.epoch)
        lp_new = Local(a.name, a.epoch)
        self._set(lp_new, P.PARTITION_PHASE_STARTING)
        old = lp
        self.local[a.name] = lp_new
        lp_new.task = asyncio.create_task(self._launch(lp_new, a, old))

    async def _launch(self, lp: Local, a: apb.Assignment, old: Local | None) -> None:
        try:
            if old is not None and old.handle is not None and old.running:
                await asyncio.to_thread(old.handle.stop, STOP_GRACE_S)
            image = a.image
            if not image.digest:
                raise WorkerError(f"image {image.name!r} not found")
            # One pull+install per digest at a time: a second install of the same digest
            # replaces the directory (rmtree, rename) under a worker the first one started.
            async with self._image_locks.setdefault(image.digest, asyncio.Lock()):
                root = self.images.root_for(image.digest, image.entrypoint)
                if root is None:
                    content = await self._pull(image)
                    root = await asyncio.to_thread(
                        self.images.install, image.digest, image.format, image.entrypoint,
                        content)
            upper = self.layers / a.name
            shutil.rmtree(upper, ignore_errors=True)
            upper.mkdir(parents=True)
            spec = PartitionSpec(
                name=a.name, root=root, entrypoint=image.entrypoint,
                args=tuple(a.spec.args), env=tuple(sorted(a.spec.env.items())),
                vcpus=a.spec.vcpus or 1, memory_bytes=a.spec.memory_bytes or (64 << 20),
                upper=upper,
            )
            restore = await self._fetch_state(a.name, a.restore) if a.restore.digest else None
            if self.workers.get(a.name) is not None:
                await asyncio.to_thread(self._drop_finished, a.name)
            if restore is None:
                lp.handle = await asyncio.to_thread(
                    self.workers.launch, spec, a.epoch, a.spec.stdin)
            else:
                lp.handle = await asyncio.to_thread(
                    self.workers.launch, spec, a.epoch, a.spec.stdin, restore)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - any launch failure fails the partition
            log.warning("launch of %s failed: %s", a.name, err)
            self._set(lp, P.PARTITION_PHASE_FAILED, f"could not start: {err}")
            self._announce(lp)
            return
        if self.local.get(a.name) is not lp:
            return  # superseded while launching
        if lp.stopping:
            await asyncio.to_thread(lp.handle.stop, STOP_GRACE_S)
        self._set(lp, P.PARTITION_PHASE_RUNNING)
        self._announce(lp)

    def _drop_finished(self, name: str) -> None:
        try:
            self.workers.forget(name)
        except WorkerError:
            pass

    def command(self, c: apb.PartitionCommand) -> None:
        lp = self.local.get(c.name)
        if c.kind == K.KIND_DELETE_CHECKPOINT:
            self.states.drop_checkpoint(c.name, c.checkpoint)
            return
        if c.kind in (K.KIND_PAUSE, K.KIND_RESUME, K.KIND_SAVE, K.KIND_CHECKPOINT):
            if lp is None or lp.epoch != c.epoch or not lp.running:
                if lp is not None:
                    self._announce(lp)
                return
            asyncio.create_task(self._lifecycle(lp, c))
            return
        if c.kind == apb.PartitionCommand.KIND_STOP:
            if lp is None or (c.epoch and lp.epoch != c.epoch):
                stale = Local(c.name, c.epoch)
                self._set(stale, P.PARTITION_PHASE_OFF, "not running on this node")
                self._announce(stale)
                return
            if not lp.running:
                self._announce(lp)
                return
            lp.stopping = True
            if lp.handle is not None:
                asyncio.create_task(asyncio.to_thread(lp.handle.stop, STOP_GRACE_S))
        elif c.kind == apb.PartitionCommand.KIND_FORGET:
            if lp is None:
                if c.purge:
                    self.states.purge(c.name)
                return
            if c.epoch and lp.epoch > c.epoch:
                return  # a newer assignment: not the one the controller means
            if not c.epoch and lp.running:
                return
            self.local.pop(c.name, None)
            asyncio.create_task(self._forget(lp, c.purge))

    async def _forget(self, lp: Local, purge: bool = False) -> None:
        if lp.task is not None and not lp.task.done():
            lp.task.cancel()
        if lp.handle is not None and lp.handle.poll() is None:
            await asyncio.to_thread(lp.handle.stop, STOP_GRACE_S)
        if self.local.get(lp.name) is None:
            await asyncio.to_thread(self._drop_finished, lp.name)
            shutil.rmtree(self.layers / lp.name, ignore_errors=True)
            if purge:
                self.states.purge(lp.name)

    def fence(self, reason: str) -> None:
        """Stop everything that runs here; reports carry `reason` (starts with "fenced")."""
        for lp in self.local.values():
            if not lp.running:
                continue
            lp.fenced = reason
            lp.stopping = True
            if lp.handle is not None:
                asyncio.create_task(asyncio.to_thread(lp.handle.stop, 0.5))

    def stdin(self, s: apb.StdinData) -> None:
        lp = self.local.get(s.name)
        if lp is None or lp.handle is None:
            return
        try:
            if s.data:
                lp.handle.write_stdin(s.data)
            if s.close:
                lp.handle.close_stdin()
        except (OSError, WorkerError) as err:
            log.info("stdin for %s dropped: %s", s.name, err)

    # -- consoles ------------------------------------------------------------------------

    async def console(self, req: apb.ConsoleRequest) -> None:
        """Stream a partition's console into the session until done or cancelled."""
        rid = req.request_id
        offset = req.offset
        deadline = time.monotonic() + 10.0
        while True:
            lp = self.local.get(req.name)
            if lp is None or (lp.handle is None and not lp.running):
                if lp is not None and time.monotonic() < deadline and lp.report.phase == 0:
                    await asyncio.sleep(POLL_S)
                    continue
                if lp is None or lp.handle is None:
                    self.send(apb.AgentMessage(console=apb.ConsoleData(
                        request_id=rid, eof=True, offset=offset,
                        error="" if lp is not None else f"no partition {req.name!r} on this node")))
                    return
            if lp.handle is None:
                await asyncio.sleep(POLL_S)  # still launching
                continue
            finished = not lp.running
            data, nxt = await asyncio.to_thread(lp.handle.read_console, offset)
            start = nxt - len(data)
            for i in range(0, len(data), CONSOLE_CHUNK):
                self.send(apb.AgentMessage(console=apb.ConsoleData(
                    request_id=rid, data=data[i : i + CONSOLE_CHUNK], offset=start + i)))
            offset = nxt
            if finished or not req.follow:
                # eof: for a snapshot (not following), everything there now was sent.
                self.send(apb.AgentMessage(console=apb.ConsoleData(
                    request_id=rid, eof=True, offset=offset)))
                return
            if not data:
                await asyncio.sleep(POLL_S * 2)
