"""The partitions this node runs: launch them through the worker manager, carry out the
controller's commands, watch them end, forget and fence them, and report every change (each
report carries a ReportCause). Reports go out through a callback (the session).

Every command may arrive twice: after a session moves to another controller replica, that
replica sends the current wanted command again. So a command that is under way already is
ignored (its end is reported), one that is done already re-announces the result, and a
command for a copy this node does not run says so (OFF, cause NOT_RUNNING).
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.logs import log_context
from node_agent import reports
from node_agent.consoles import stream_console
from node_agent.image_config import guest_command
from node_agent.images import Blob, ImageCache, ImagePullError, cache_key
from node_agent.reports import Cause
from node_agent.runtime.spec import (
    DEFAULT_DISK_BYTES,
    DEFAULT_MAX_PROCESSES,
    ExitStatus,
    PartitionSpec,
)
from node_agent.runtime.workers import WorkerError, WorkerHandle, WorkerManager
from node_agent.saved_states import PullState, SavedStates
from node_agent.states import StateStore
from node_agent.usage import INTERVAL_S as USAGE_INTERVAL_S
from node_agent.usage import UsageMeter

if TYPE_CHECKING:
    from node_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)
P = pb
K = apb.PartitionCommand
POLL_S = 0.02
STOP_MARGIN_S = 3.0     # a stopped worker may take this long to end before SIGKILL
FENCE_GRACE_S = 0.5     # the same for a fence: it must be quick
MAX_STOP_GRACE_S = 3600.0
SAVE_TIMEOUT_S = 120.0  # WorkerHandle.save's default: a save takes no longer
LIFECYCLE = frozenset({K.KIND_PAUSE, K.KIND_RESUME, K.KIND_SAVE, K.KIND_CHECKPOINT})
#: Downloads an image's content into the given path, verified (agent.py: BlobPuller).
Pull = Callable[[pb.Image, Path], Awaitable[None]]
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
    stop_grace: float | None = None  # the grace of the STOP sent to its worker, if any
    saving: bool = False     # a save is under way; whoever runs it reports its end
    fenced: str = ""         # the fence's reason, once fenced
    forgotten: bool = False  # stopped because of a FORGET
    pending: list[tuple[int, str]] = field(default_factory=list)  # lifecycle ops under way
    adopted_save_until: float = 0.0  # a save the previous agent began may still run
    task: asyncio.Task[None] | None = None
    image_key: str = ""      # the image cache entry it runs from (never evicted meanwhile)

    @property
    def running(self) -> bool:
        return self.report.phase in (P.PARTITION_PHASE_STARTING, P.PARTITION_PHASE_RUNNING,
                                     P.PARTITION_PHASE_PAUSED)


class Supervisor:
    def __init__(self, run_dir: Path, images: ImageCache, pull: Pull,
                 pull_state: PullState, node: str) -> None:
        self.run_dir = run_dir
        self.node = node
        self.states = StateStore(run_dir / "states")
        self.saved = SavedStates(self.states, node, pull_state)
        self.layers = run_dir / "layers"
        self.layers.mkdir(parents=True, exist_ok=True)
        self.workers = WorkerManager(run_dir / "workers")
        self.images = images
        self._pull = pull
        self.local: dict[str, Local] = {}
        self.send: Send = lambda msg: None
        self._monitor: asyncio.Task[None] | None = None
        self._usage: asyncio.Task[None] | None = None
        self.meter = UsageMeter()
        self._launching: Counter[str] = Counter()  # image cache keys of launches under way
        self._name_locks: dict[str, asyncio.Lock] = {}
        self._retiring: dict[tuple[str, int], int] = {}  # old copies being stopped
        self.metrics: AgentMetrics | None = None   # set by the agent

    # -- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.workers.start_forkserver)
        for handle in await asyncio.to_thread(self.workers.adopt):
            lp = Local(handle.name, handle.epoch, handle)
            status = handle.poll()
            if status is None:
                self._set(lp, P.PARTITION_PHASE_RUNNING, "re-adopted after an agent restart")
                if self.saved.save_may_run(lp.name, handle.pid):
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
        self._usage = asyncio.create_task(self._report_usage(), name="usage")

    async def close(self) -> None:
        if self._monitor:
            self._monitor.cancel()
        if self._usage:
            self._usage.cancel()
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

    def usage_targets(self) -> list[tuple[str, int, int]]:
        """(name, epoch, worker pid) of every running partition."""
        return [(lp.name, lp.epoch, lp.handle.pid) for lp in self.local.values()
                if lp.running and lp.handle is not None]

    async def _report_usage(self) -> None:
        """Every USAGE_INTERVAL_S, while anything runs: one small message to the session."""
        while True:
            await asyncio.sleep(USAGE_INTERVAL_S)
            try:
                report = await asyncio.to_thread(self.meter.measure, self.usage_targets())
            except Exception as err:  # noqa: BLE001 - measuring must never stop the agent
                log.warning("measuring usage failed: %s", err)
                continue
            if report.partitions:
                self.send(apb.AgentMessage(usage=report))

    # -- reports -------------------------------------------------------------------------

    def _set(self, lp: Local, phase: pb.PartitionPhase.ValueType, reason: str = "",
             exit_code: int | None = None,
             cause: Cause = apb.REPORT_CAUSE_UNSPECIFIED) -> None:
        lp.report = reports.report(lp.name, lp.epoch, phase, reason, exit_code, cause)

    def _announce(self, lp: Local) -> None:
        self.send(apb.AgentMessage(report=lp.report))

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
        try:
            lp_new.image_key = cache_key(a.image.digest, a.image.format, a.image.entrypoint)
        except ImagePullError:
            pass  # the launch reports it
        self._set(lp_new, P.PARTITION_PHASE_STARTING)
        self.local[a.name] = lp_new
        with log_context(partition=a.name, epoch=a.epoch):   # the task's log lines
            lp_new.task = asyncio.create_task(self._launch(lp_new, a, lp))

    def _name_lock(self, name: str) -> asyncio.Lock:
        """Serialises what touches one partition name's directories: a launch, and the
        clean-up after a FORGET (which once deleted a new launch's writable layer: a save,
        then a start on the same node, failed with ENOENT)."""
        return self._name_locks.setdefault(name, asyncio.Lock())

    async def _launch(self, lp: Local, a: apb.Assignment, old: Local | None) -> None:
        key = lp.image_key
        self._launching[key] += 1
        try:
            async with self._name_lock(a.name):
                await self._launch_locked(lp, a, old)
        finally:
            self._launching[key] -= 1
            if self._launching[key] <= 0:
                del self._launching[key]

    async def _image_root(self, image: pb.Image) -> Path:
        """The image's unpacked root: cached, or pulled (one download per image however
        many partitions wait for it) and installed."""
        blob = Blob(image.digest, image.size_bytes, image.format, image.entrypoint)

        async def download(dest: Path) -> None:
            await self._pull(image, dest)

        return await self.images.ensure(blob, download, self.images_in_use)

    def images_in_use(self) -> set[str]:
        """Image cache keys partitions here use: every partition the node holds (running
        or not, until forgotten), every launch under way, every worker directory."""
        used = {lp.image_key for lp in self.local.values() if lp.image_key}
        used.update(self._launching)
        for root in self.workers.roots():
            key = self.images.key_of_root(root)
            if key is not None:
                used.add(key)
        return used

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
            command = guest_command(image, a.spec)
            root = await self._image_root(image)
            if command.entrypoint != image.entrypoint and \
                    not self.images.has_file(root, command.entrypoint):
                raise WorkerError(f"entrypoint {command.entrypoint[:200]!r} is not a file in "
                                  f"image {image.name!r}")
            upper = self.layers / a.name
            shutil.rmtree(upper, ignore_errors=True)
            upper.mkdir(parents=True)
            spec = PartitionSpec(
                name=a.name, root=root, entrypoint=command.entrypoint,
                args=command.args, env=command.env, cwd=command.workdir,
                vcpus=a.spec.vcpus or 1, memory_bytes=a.spec.memory_bytes or (64 << 20),
                upper=upper, disk_bytes=a.spec.disk_bytes or DEFAULT_DISK_BYTES,
                max_processes=a.spec.max_processes or DEFAULT_MAX_PROCESSES,
            )
            restore = await self.saved.fetch(a.name, a.restore) if a.restore.digest else None
            if lp.stopping:
                self._never_started(lp)
                return
            if self.workers.get(a.name) is not None:
                await asyncio.to_thread(self._drop_finished, a.name)
            started = time.monotonic()
            lp.handle = await asyncio.to_thread(
                self.workers.launch, spec, a.epoch, a.spec.stdin, restore)
            if self.metrics is not None:
                self.metrics.launched(a.name)
                if restore is not None:
                    self.metrics.restore_seconds.observe(time.monotonic() - started)
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
            await asyncio.to_thread(lp.handle.stop, 0.0,
                                    FENCE_GRACE_S if lp.fenced else STOP_MARGIN_S)
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
                await asyncio.to_thread(old.handle.stop, 0.0, STOP_MARGIN_S)
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
                # Turn Off, even during a Shut Down: a fenced guest must not run on.
                asyncio.create_task(asyncio.to_thread(lp.handle.stop, 0.0, FENCE_GRACE_S))
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

    # -- consoles and states -----------------------------------------------------------

    async def console(self, req: apb.ConsoleRequest) -> None:
        """Stream a partition's console into the session until done or cancelled."""

        def lookup(name: str) -> tuple[WorkerHandle | None, bool, bool]:
            lp = self.local.get(name)
            return (lp.handle, lp.running, True) if lp is not None else (None, False, False)

        await stream_console(req, lookup, self.send)

    # -- commands ------------------------------------------------------------------------

    def command(self, c: apb.PartitionCommand) -> None:
        if c.kind == K.KIND_DELETE_CHECKPOINT:
            self.states.drop_checkpoint(c.name, c.checkpoint)
            return
        if c.kind == K.KIND_FORGET:
            self._forget_command(c)
            return
        lp = self.local.get(c.name)
        any_epoch = c.kind == K.KIND_STOP and not c.epoch
        if lp is None or (lp.epoch != c.epoch and not any_epoch):
            self.send(apb.AgentMessage(report=reports.not_running(c.name, c.epoch)))
            return
        if not lp.running:
            # It ended: say how (a saved one re-announces SAVED with its state).
            self._announce(lp)
            return
        if c.kind == K.KIND_STOP:
            self._stop(lp, c.grace_seconds)
        elif c.kind in LIFECYCLE:
            self._lifecycle_command(lp, c)

    def _stop(self, lp: Local, grace: float) -> None:
        """Shut Down with `grace` seconds between SIGTERM and turning it off (0: Turn Off).
        A stop under way is only ever shortened (Turn Off while it shuts down)."""
        grace = min(grace, MAX_STOP_GRACE_S) if math.isfinite(grace) and grace > 0 else 0.0
        if lp.stopping and (lp.stop_grace is None or grace >= lp.stop_grace):
            return  # a stop at least as quick is under way; its end is reported
        lp.stopping = True
        if lp.handle is not None:  # a launch under way stops it itself (at once)
            lp.stop_grace = grace
            asyncio.create_task(asyncio.to_thread(lp.handle.stop, grace, STOP_MARGIN_S))

    def _lifecycle_command(self, lp: Local, c: apb.PartitionCommand) -> None:
        op = (c.kind, c.checkpoint)
        if lp.stopping or lp.saving:
            if c.kind == K.KIND_CHECKPOINT:
                what = "stopped" if lp.stopping else "saved"
                self.send(self._checkpoint_message(
                    lp, c.checkpoint, f"could not take the checkpoint: it is being {what}"))
            return  # the worker is going away; its end is reported
        if c.kind == K.KIND_SAVE and time.monotonic() < lp.adopted_save_until:
            return  # the previous agent's save may still run: its end is reported
        if (lp.pending and lp.pending[-1] == op) or (
                c.kind in (K.KIND_SAVE, K.KIND_CHECKPOINT) and op in lp.pending):
            return  # the same request is under way
        if not lp.pending and (
                (c.kind == K.KIND_PAUSE and lp.report.phase == P.PARTITION_PHASE_PAUSED) or
                (c.kind == K.KIND_RESUME and lp.report.phase == P.PARTITION_PHASE_RUNNING)):
            self._announce(lp)  # already there
            return
        if c.kind == K.KIND_CHECKPOINT:
            ref = self.saved.known_checkpoint(lp.name, c.checkpoint)
            if ref is not None:
                self.send(self._checkpoint_message(lp, c.checkpoint, ref=ref))
                return
        if lp.handle is None:
            self._announce(lp)  # still starting: the controller asks again later
            return
        lp.pending.append(op)
        if c.kind == K.KIND_SAVE:
            lp.saving = True
        with log_context(partition=lp.name, epoch=lp.epoch):
            asyncio.create_task(self._lifecycle(lp, c))

    def _forget_command(self, c: apb.PartitionCommand) -> None:
        """Stop the copy at c.epoch (or an older one) and delete what the node keeps for it;
        a newer copy is not the one meant. Epoch 0: only a copy that does not run."""
        lp = self.local.get(c.name)
        if lp is None:
            asyncio.create_task(self._cleanup(c.name, c.purge))
            return
        if c.epoch and lp.epoch > c.epoch:
            return
        if not c.epoch and (lp.running or lp.saving):
            return
        del self.local[c.name]
        asyncio.create_task(self._forget(lp, c.purge))

    async def _forget(self, lp: Local, purge: bool) -> None:
        async with self._name_lock(lp.name):
            await self._forget_locked(lp, purge)

    async def _forget_locked(self, lp: Local, purge: bool) -> None:
        was_running = lp.running or lp.saving
        lp.forgotten = True
        await self._retire(lp)
        if was_running:
            status = lp.handle.poll() if lp.handle is not None else None
            if status is not None:
                self._finish(lp, status, announce=False)
            else:
                self._set(lp, P.PARTITION_PHASE_OFF, "stopped before it started",
                          cause=apb.REPORT_CAUSE_STOPPED)
            self._announce(lp)
        await self._cleanup_locked(lp.name, purge)

    # -- lifecycle operations ----------------------------------------------------------

    async def _lifecycle(self, lp: Local, c: apb.PartitionCommand) -> None:
        try:
            await self._lifecycle_op(lp, c)
        finally:
            if (c.kind, c.checkpoint) in lp.pending:
                lp.pending.remove((c.kind, c.checkpoint))
            if c.kind == K.KIND_SAVE:
                lp.saving = False

    async def _lifecycle_op(self, lp: Local, c: apb.PartitionCommand) -> None:
        handle = lp.handle
        if handle is None:
            return
        try:
            if c.kind == K.KIND_PAUSE:
                await asyncio.to_thread(handle.pause)
                self._set(lp, P.PARTITION_PHASE_PAUSED)
            elif c.kind == K.KIND_RESUME:
                await asyncio.to_thread(handle.resume)
                self._set(lp, P.PARTITION_PHASE_RUNNING)
            elif c.kind == K.KIND_SAVE:
                tmp = self.states.scratch(lp.name, "save")
                started = time.monotonic()
                await asyncio.to_thread(handle.save, tmp)
                digest, size, _ = await asyncio.to_thread(self.states.adopt, lp.name, tmp)
                if self.metrics is not None:
                    self.metrics.save_seconds.observe(time.monotonic() - started)
                self._set(lp, P.PARTITION_PHASE_SAVED, "state saved")
                lp.report.state.CopyFrom(self.saved.ref(digest, size))
            elif c.kind == K.KIND_CHECKPOINT:
                tmp = self.states.scratch(lp.name, f"cp-{c.checkpoint}")
                await asyncio.to_thread(handle.checkpoint, tmp)
                digest, size, _ = await asyncio.to_thread(self.states.adopt, lp.name, tmp)
                self.states.remember(lp.name, c.checkpoint, digest)
                self.send(self._checkpoint_message(lp, c.checkpoint,
                                                  ref=self.saved.ref(digest, size)))
                return
        except Exception as err:  # noqa: BLE001 - reported; the partition keeps its phase
            await self._lifecycle_failed(lp, c, err)
            return
        self._announce(lp)

    def _checkpoint_message(self, lp: Local, checkpoint: str, reason: str = "",
                            ref: pb.StateRef | None = None) -> apb.AgentMessage:
        return apb.AgentMessage(report=reports.checkpoint(lp.report, checkpoint, reason, ref))

    async def _lifecycle_failed(self, lp: Local, c: apb.PartitionCommand,
                                err: Exception) -> None:
        log.warning("%s of %s failed: %s", K.Kind.Name(c.kind), lp.name, err)
        if c.kind == K.KIND_CHECKPOINT:
            self.send(self._checkpoint_message(
                lp, c.checkpoint, f"could not take the checkpoint: {err}"))
            return
        self.send(apb.AgentMessage(event=apb.AgentEvent(
            partition=lp.name, type="Warning",
            reason=K.Kind.Name(c.kind).removeprefix("KIND_").capitalize() + "Failed",
            message=str(err))))
        status = lp.handle.poll() if lp.handle is not None else None
        if status is not None and lp.running:
            # The worker ended meanwhile (crashed, stopped, fenced, or saved after all).
            if status.saved:
                await self._collect_save(lp)
            else:
                self._finish(lp, status)
            return
        if c.kind == K.KIND_SAVE and lp.running:
            # Still running: say so, so the controller leaves Saving. A one-off report:
            # lp.report keeps its cause, so a later re-announcement is not a save failure.
            self.send(apb.AgentMessage(report=reports.save_failed(lp.report, err)))
            return
        self._announce(lp)

    async def _collect_save(self, lp: Local, announce: bool = True) -> None:
        """The worker ended saved, but no save of ours waited for it (this agent restarted
        during the save): its state sits in the scratch file."""
        lp.saving = True
        try:
            found = await asyncio.to_thread(self.saved.adopt_scratch, lp.name)
        finally:
            lp.saving = False
        if found is None:
            self._set(lp, P.PARTITION_PHASE_FAILED,
                      "the save did not complete: its state file is missing",
                      cause=apb.REPORT_CAUSE_FAILED)
        else:
            self._set(lp, P.PARTITION_PHASE_SAVED, "state saved (collected after an agent "
                      "restart)")
            lp.report.state.CopyFrom(found)
        if announce:
            self._forward_events(lp)
            self._announce(lp)
