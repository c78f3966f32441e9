"""The partitions this node runs: launch through the worker manager, watch them end, stop and
forget them, fence them, serve their consoles. Reports go out through a callback (the
session); every report carries a ReportCause. Commands are in supervisor_commands.py, saved
states in supervisor_states.py."""

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
from node_agent.supervisor_commands import CommandOps
from node_agent.supervisor_states import PullState, StateOps

log = logging.getLogger(__name__)
P = pb
POLL_S = 0.02
CONSOLE_CHUNK = 256 << 10
STOP_GRACE_S = 3.0
FENCE_GRACE_S = 0.5
SAVE_TIMEOUT_S = 120.0  # WorkerHandle.save's default: a save takes no longer
Pull = Callable[[pb.Image], Awaitable[bytes]]
NORMAL_EVENTS = frozenset({"Restored", "Saved", "Paused", "Resumed", "Checkpoint"})
Send = Callable[[apb.AgentMessage], None]


@dataclass
class Local:
    name: str
    epoch: int
    handle: WorkerHandle | None = None
    report: apb.PartitionReport = field(default_factory=apb.PartitionReport)
    events_sent: int = 0
    stopping: bool = False   # a stop was asked for (STOP, FORGET or the fence)
    saving: bool = False     # a save is under way; whoever runs it reports its end
    fenced: str = ""         # the fence's reason, once fenced
    forgotten: bool = False  # stopped because of a FORGET
    pending: list[tuple[int, str]] = field(default_factory=list)  # lifecycle ops under way
    adopted_save_until: float = 0.0  # a save the previous agent began may still run
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.report.phase in (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING,
                                     P.PARTITION_PHASE_PAUSED)


class Supervisor(CommandOps, StateOps):
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
        self._name_locks: dict[str, asyncio.Lock] = {}
        self._retiring: dict[tuple[str, int], int] = {}  # old copies being stopped

    # -- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.workers.start_forkserver)
        for handle in await asyncio.to_thread(self.workers.adopt):
            lp = Local(handle.name, handle.epoch, handle)
            status = handle.poll()
            if status is None:
                self._set(lp, P.PARTITION_PHASE_RUNNING, "re-adopted after an agent restart")
                if self._save_may_run(lp.name, handle.pid):
                    lp.adopted_save_until = time.monotonic() + SAVE_TIMEOUT_S
            elif status.saved:
                # The previous agent died during the save: the state is in the scratch file.
                await self._collect_save(lp, announce=False)
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

    def inventory(self) -> list[tuple[str, int]]:
        """(name, epoch) of every copy whose worker lives, is being launched or saving,
        including old copies still being stopped."""
        out = [(lp.name, lp.epoch) for lp in self.local.values() if lp.running or lp.saving]
        out += [key for key, n in self._retiring.items() if n > 0 and key not in out]
        return out

    # -- reports -------------------------------------------------------------------------

    def _finish(self, lp: Local, status: ExitStatus, announce: bool = True) -> None:
        """The worker ended (not by a save): say how, and why."""
        failed = status.failed_reason
        if lp.fenced or (failed or "").startswith("fenced"):
            self._set(lp, P.PARTITION_PHASE_FAILED, lp.fenced or failed or "fenced",
                      cause=apb.REPORT_CAUSE_FENCED)
        elif lp.stopping:
            reason = failed or ("stopped: the controller forgot it" if lp.forgotten
                                else "stopped by request")
            self._set(lp, P.PARTITION_PHASE_FAILED if failed else P.PARTITION_PHASE_OFF,
                      reason, status.exit_code, cause=apb.REPORT_CAUSE_STOPPED)
        elif failed:
            self._set(lp, P.PARTITION_PHASE_FAILED, failed, cause=apb.REPORT_CAUSE_FAILED)
        else:
            self._set(lp, P.PARTITION_PHASE_OFF, "guest exited", status.exit_code,
                      cause=apb.REPORT_CAUSE_EXITED)
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
                if status is None:
                    if tick % 25 == 0:
                        self._forward_events(lp)
                elif status.saved:  # a save the previous agent asked for
                    lp.saving = True
                    asyncio.create_task(self._collect_save(lp))
                else:
                    self._finish(lp, status)

    # -- launching -----------------------------------------------------------------------

    def assign(self, a: apb.Assignment) -> None:
        lp = self.local.get(a.name)
        if lp is not None and lp.epoch == a.epoch:
            self._announce(lp)  # already ours: say where it is
            return
        if lp is not None and (lp.running or lp.saving):
            log.warning("%s: assignment epoch %d while epoch %d runs; stopping the old one",
                        a.name, a.epoch, lp.epoch)
        lp_new = Local(a.name, a.epoch)
        self._set(lp_new, P.PARTITION_PHASE_STARTING)
        self.local[a.name] = lp_new
        lp_new.task = asyncio.create_task(self._launch(lp_new, a, lp))

    def _name_lock(self, name: str) -> asyncio.Lock:
        """Serialises what touches one partition name's directories: a launch, and the
        clean-up after a FORGET (which once deleted a new launch's writable layer: a save,
        then a start on the same node, failed with ENOENT)."""
        return self._name_locks.setdefault(name, asyncio.Lock())

    async def _launch(self, lp: Local, a: apb.Assignment, old: Local | None) -> None:
        async with self._name_lock(a.name):
            await self._launch_locked(lp, a, old)

    async def _launch_locked(self, lp: Local, a: apb.Assignment, old: Local | None) -> None:
        try:
            if old is not None:
                await self._retire(old)
            if lp.stopping:
                self._never_started(lp)
                return
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
            if lp.stopping:
                self._never_started(lp)
                return
            if self.workers.get(a.name) is not None:
                await asyncio.to_thread(self._drop_finished, a.name)
            lp.handle = await asyncio.to_thread(
                self.workers.launch, spec, a.epoch, a.spec.stdin, restore)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - any launch failure fails the partition
            log.warning("launch of %s failed: %s", a.name, err)
            self._set(lp, P.PARTITION_PHASE_FAILED, f"could not start: {err}",
                      cause=apb.REPORT_CAUSE_FAILED)
            if self.local.get(a.name) is lp:
                self._announce(lp)
            return
        current = self.local.get(a.name) is lp
        if lp.stopping or not current:
            # Stopped, fenced or superseded while launching: it must not run on.
            await asyncio.to_thread(lp.handle.stop, FENCE_GRACE_S if lp.fenced else
                                    STOP_GRACE_S)
            status = lp.handle.poll()
            if current and lp.running and status is not None:
                self._finish(lp, status)
            return
        self._set(lp, P.PARTITION_PHASE_RUNNING)
        self._announce(lp)

    def _never_started(self, lp: Local) -> None:
        if lp.fenced:
            self._set(lp, P.PARTITION_PHASE_FAILED, lp.fenced, cause=apb.REPORT_CAUSE_FENCED)
        else:
            self._set(lp, P.PARTITION_PHASE_OFF, "stopped before it started",
                      cause=apb.REPORT_CAUSE_STOPPED)
        if self.local.get(lp.name) is lp:
            self._announce(lp)

    async def _retire(self, old: Local) -> None:
        """Stop a copy that is no longer the one we keep: wait for its launch to end (a
        launch cannot be cancelled safely once the worker is being forked), then stop its
        worker. Until then it stays in the inventory."""
        old.stopping = True
        key = (old.name, old.epoch)
        self._retiring[key] = self._retiring.get(key, 0) + 1
        try:
            if old.task is not None and old.task is not asyncio.current_task():
                await asyncio.wait([old.task])
            if old.handle is not None and old.handle.poll() is None:
                await asyncio.to_thread(old.handle.stop, STOP_GRACE_S)
        finally:
            self._retiring[key] -= 1
            if not self._retiring[key]:
                del self._retiring[key]

    def _drop_finished(self, name: str) -> None:
        try:
            self.workers.forget(name)
        except WorkerError:
            pass

    async def _cleanup(self, name: str, purge: bool) -> None:
        async with self._name_lock(name):
            await self._cleanup_locked(name, purge)

    async def _cleanup_locked(self, name: str, purge: bool) -> None:
        """Delete what the node keeps for a partition it no longer has (the caller holds
        the name's lock, so no launch of the name runs meanwhile)."""
        if name in self.local:
            return
        await asyncio.to_thread(self._drop_finished, name)
        shutil.rmtree(self.layers / name, ignore_errors=True)
        if purge:
            self.states.purge(name)

    # -- fencing and stdin ---------------------------------------------------------------

    def fence(self, reason: str) -> int:
        """Stop everything that runs here and is not fenced yet; reports say FENCED and
        carry `reason` (it starts with "fenced"). Returns how many it began to stop."""
        count = 0
        for lp in self.local.values():
            if not (lp.running or lp.saving) or lp.fenced:
                continue
            lp.fenced = reason
            lp.stopping = True
            count += 1
            if lp.handle is not None:  # a launch under way stops it itself (_launch)
                asyncio.create_task(asyncio.to_thread(lp.handle.stop, FENCE_GRACE_S))
        return count

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
