"""Worker processes for partitions: launch through the fork server, adopt after a restart.

Everything about a partition lives in `RUN_DIR/partitions/<name>/`, so a restarted agent
finds its running workers again (`WorkerManager.adopt()`):

  meta.json     written by the manager before the fork: name, epoch, stdin, spec
  pid           "PID STARTTIME" (written by the fork server right after the fork; the start
                time tells our worker from a process that reused its pid)
  ctl.sock, console.log, events.jsonl, syscalls.bin, ready, status.json, worker.log: see
                worker_main.py
  exit.json     how the process ended, recorded by the fork server if it was the parent

How a handle tells what happened, in order: status.json (the Machine returned) → the worker
still lives → exit.json ("worker died: signal 11 (SIGSEGV)") → "worker vanished".
Blocking methods are meant to be called from threads (the agent uses asyncio.to_thread).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .forkserver import describe_wait, proc_starttime, recv_msg, send_msg
from .spec import ExitStatus, PartitionSpec
from .worker_console import Mark, read_marks, read_ring
from .worker_lifecycle import LifecycleMixin, WorkerError, _connect
from .worker_main import FRAME, OP_EOF, OP_STDIN, OP_STOP, write_json_atomic

__all__ = ["WorkerManager", "WorkerHandle", "WorkerError", "DEFAULT_MACHINE", "STOP_MARGIN_S"]

DEFAULT_MACHINE = "node_agent.runtime.machine:Machine"
#: How long a worker may take to end once its guest is turned off, before SIGKILL.
STOP_MARGIN_S = 3.0
_ROOT = Path(__file__).resolve().parents[2]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class WorkerHandle(LifecycleMixin):
    """One partition's worker, launched or adopted by this agent."""

    def __init__(self, name: str, pid: int, epoch: int, pdir: Path, starttime: int,
                 stdin: bool) -> None:
        self.name, self.pid, self.epoch, self.dir = name, pid, epoch, pdir
        self._starttime, self._stdin = starttime, stdin
        self._status: ExitStatus | None = None
        self._lock = threading.Lock()
        self._ctl: socket.socket | None = None
        self._killed_after: float | None = None

    def __repr__(self) -> str:
        return f"WorkerHandle({self.name!r}, pid={self.pid}, epoch={self.epoch})"

    # -- state ------------------------------------------------------------------------
    def alive(self) -> bool:
        start = proc_starttime(self.pid)
        return start is not None and (self._starttime == 0 or start == self._starttime)

    def poll(self) -> ExitStatus | None:
        """The final status, or None while the worker runs. Never blocks."""
        if self._status is None:
            self._status = self._final_status()
        return self._status

    def _final_status(self) -> ExitStatus | None:
        raw = _read_json(self.dir / "status.json")
        if isinstance(raw, dict):
            return ExitStatus(raw.get("exit_code"), raw.get("failed_reason"),
                              {int(k): int(v) for k, v in
                               (raw.get("unknown_syscalls") or {}).items()},
                              saved=bool(raw.get("saved", False)))
        if self.alive():
            return None
        if (self.dir / "status.json").exists():  # written between our two looks
            return self._final_status()
        if self._is_unreaped_child():
            return None  # dead but the fork server has not recorded it yet
        # Read only now: the fork server writes exit.json before it reaps, so once the
        # zombie is gone the record is there. (Read before the zombie check, a record
        # written and reaped between the two looks made a crash look like "vanished".)
        record = _read_json(self.dir / "exit.json")
        if self._killed_after is not None:
            reason = f"worker killed: did not stop within {self._killed_after:g}s"
        elif isinstance(record, dict) and record.get("pid") == self.pid:
            reason = describe_wait(record)
        else:
            reason = "worker vanished"
        return ExitStatus(None, reason, {})

    def _is_unreaped_child(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (OSError, IndexError):
            return False

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        """Block until the worker has ended (its status) or the timeout passed (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pidfd = -1
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(self.pid)  # readable once the process has exited
        try:
            while (status := self.poll()) is None:
                step = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if step <= 0:
                    return None
                if pidfd >= 0:
                    if select.select([pidfd], [], [], step)[0]:
                        os.close(pidfd)
                        pidfd = -1
                else:  # exited (or no pidfd): status.json / exit.json are moments away
                    time.sleep(min(step, 0.005 if not self.alive() else 0.05))
            return status
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    # -- control ----------------------------------------------------------------------
    def _request(self, op: bytes, payload: bytes = b"", timeout: float = 2.0) -> bool:
        """Send one control request; False if the worker is not (or no longer) listening."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                try:
                    if self._ctl is None:
                        self._ctl = _connect(self.dir, deadline - time.monotonic())
                    self._ctl.sendall(FRAME.pack(op, len(payload)) + payload)
                    if self._ctl.recv(1) == b"k":
                        return True
                    raise ConnectionError("control socket closed")
                except OSError:
                    if self._ctl is not None:
                        self._ctl.close()
                        self._ctl = None
                    if time.monotonic() >= deadline or self.poll() is not None:
                        return False
                    time.sleep(0.01)

    def stop(self, grace_s: float = 0.0, margin_s: float = STOP_MARGIN_S) -> None:
        """Stop the guest: Machine.stop(grace_s) in the worker (OP_STOP {"grace": s}):
        SIGTERM to every guest process, turned off grace_s later (0: at once). SIGKILL the
        worker if it outlives grace_s + margin_s. Blocks until the worker has ended."""
        if self.poll() is not None:
            return
        grace_s = max(0.0, grace_s)
        limit = grace_s + margin_s
        deadline = time.monotonic() + limit
        payload = json.dumps({"grace": grace_s}).encode()
        if not self._request(OP_STOP, payload, timeout=min(margin_s, 2.0)) and self.alive():
            # Not listening: the worker's SIGTERM handler turns the guest off at once.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        if self.wait(max(0.0, deadline - time.monotonic())) is None and self.alive():
            self._killed_after = limit
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait(5.0)

    def write_stdin(self, data: bytes) -> None:
        if not self._stdin:
            raise WorkerError(f"{self.name}: launched without stdin")
        view = memoryview(data)
        for i in range(0, len(view), 1 << 16):
            if not self._request(OP_STDIN, bytes(view[i:i + (1 << 16)])):
                raise WorkerError(f"{self.name}: worker is not accepting stdin")

    def close_stdin(self) -> None:
        if not self._stdin:
            raise WorkerError(f"{self.name}: launched without stdin")
        self._request(OP_EOF)

    # -- output -----------------------------------------------------------------------
    def read_console(self, offset: int) -> tuple[bytes, int]:
        return read_ring(self.dir / "console.log", offset)

    def console_marks(self, start: int, stop: int) -> list[Mark]:
        """When the console bytes [start, stop) were written (worker_console.py)."""
        return read_marks(self.dir / "console.log", start, stop)

    def events(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        try:
            with open(self.dir / "events.jsonl") as f:
                for line in f:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        obj = json.loads(line)
                        out.append((str(obj["reason"]), str(obj["message"])))
        except OSError:
            pass
        return out

    def _close(self) -> None:
        with self._lock:
            if self._ctl is not None:
                self._ctl.close()
                self._ctl = None


class WorkerManager:
    """Launches partitions' workers through a preloaded fork server; re-adopts them."""

    def __init__(self, run_dir: Path, *, machine: str = DEFAULT_MACHINE) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.parts = self.run_dir / "partitions"
        self.parts.mkdir(parents=True, exist_ok=True)
        self._machine = machine
        self._handles: dict[str, WorkerHandle] = {}
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._keeper_stop = threading.Event()

    # -- fork server ------------------------------------------------------------------
    def start_forkserver(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            self._shutdown_forkserver()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            spawned: list[subprocess.Popen[bytes] | BaseException] = []
            ready = threading.Event()
            self._keeper_stop = stop = threading.Event()

            def keeper() -> None:
                # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so
                # a dedicated thread forks the fork server and lives until close().
                try:
                    spawned.append(self._spawn(theirs))
                except BaseException as exc:  # reported to the caller below
                    spawned.append(exc)
                ready.set()
                stop.wait()

            threading.Thread(target=keeper, name="forkserver-keeper", daemon=True).start()
            ready.wait()
            theirs.close()
            if isinstance(spawned[0], BaseException):
                ours.close()
                raise WorkerError(f"cannot start the fork server: {spawned[0]}")
            self._proc, self._sock = spawned[0], ours
            try:
                self._call({"op": "ping"}, timeout=60.0)  # returns once preloading is done
            except WorkerError:
                self._shutdown_forkserver()
                raise

    def _spawn(self, theirs: socket.socket) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH"))
                                            if p)
        log = open(self.run_dir / "forkserver.log", "ab")
        with log:
            return subprocess.Popen(
                [sys.executable, "-m", "node_agent.runtime.forkserver", "--fd",
                 str(theirs.fileno()), "--ppid", str(os.getpid()), "--machine",
                 self._machine],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, cwd=self.run_dir, env=env)

    def _call(self, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        with self._lock:
            if self._sock is None:
                raise WorkerError("fork server not running")
            try:
                self._sock.settimeout(timeout)
                send_msg(self._sock, req)
                reply: dict[str, Any] = recv_msg(self._sock)
                return reply
            except (OSError, EOFError) as exc:
                self._shutdown_forkserver()
                log = self.run_dir / "forkserver.log"
                raise WorkerError(f"fork server failed ({exc}); see {log}") from exc

    def _shutdown_forkserver(self) -> None:
        if self._sock is not None:
            self._sock.close()  # end-of-file: the fork server exits
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._keeper_stop.set()

    def close(self) -> None:
        """Stop the fork server. Workers keep running (a new manager can adopt them)."""
        with self._lock:
            self._shutdown_forkserver()
            for handle in self._handles.values():
                handle._close()

    # -- partitions -------------------------------------------------------------------
    def launch(self, spec: PartitionSpec, epoch: int, stdin: bool = False,
               restore: Path | None = None) -> WorkerHandle:
        """Start the partition's worker: a cold boot, or from a state file (``restore``)."""
        if restore is not None:
            restore = Path(restore).resolve()
            if not restore.is_file():
                raise WorkerError(f"state file {restore} does not exist")
        with self._lock:
            old = self._handles.get(spec.name) or self._load(self.parts / spec.name)
            if old is not None and old.poll() is None:
                raise WorkerError(f"partition {spec.name!r} is already running "
                                  f"(pid {old.pid}, epoch {old.epoch})")
            self.start_forkserver()
            spec = dataclasses.replace(
                spec, root=Path(spec.root).resolve(),
                upper=None if spec.upper is None else Path(spec.upper).resolve())
            pdir = self.parts / spec.name
            self._remove_dir(spec.name)
            pdir.mkdir(mode=0o750)
            write_json_atomic(pdir / "meta.json", {
                "name": spec.name, "epoch": epoch, "stdin": stdin,
                "restore": None if restore is None else str(restore),
                "spec": {k: str(v) if isinstance(v, Path) else v
                         for k, v in dataclasses.asdict(spec).items()}})
            reply = self._call({"op": "launch", "dir": str(pdir), "spec": spec,
                                "stdin": stdin,
                                "restore": None if restore is None else str(restore)})
            if "pid" not in reply:
                raise WorkerError(f"launch of {spec.name!r} failed: {reply.get('error')}")
            handle = self._load(pdir)
            if handle is None:
                raise WorkerError(f"launch of {spec.name!r} left no pid file")
            self._handles[spec.name] = handle
            return handle

    def _load(self, pdir: Path) -> WorkerHandle | None:
        meta = _read_json(pdir / "meta.json")
        try:
            pid_text = (pdir / "pid").read_text().split()
            pid, start = int(pid_text[0]), int(pid_text[1])
        except (OSError, ValueError, IndexError):
            return None
        if not isinstance(meta, dict):
            return None
        return WorkerHandle(str(meta["name"]), pid, int(meta["epoch"]), pdir, start,
                            bool(meta.get("stdin")))

    def adopt(self) -> list[WorkerHandle]:
        """Handles for every partition dir whose worker lives or whose end is not collected
        (the dir is removed by forget() once the final status has been reported)."""
        with self._lock:
            found: list[WorkerHandle] = []
            for pdir in sorted(self.parts.iterdir()):
                if pdir.name.startswith(".") or not pdir.is_dir():
                    continue
                handle = self._handles.get(pdir.name) or self._load(pdir)
                if handle is not None:
                    self._handles[handle.name] = handle
                    found.append(handle)
            return found

    def roots(self) -> list[Path]:
        """The image root of every partition directory (its worker lives, or its end is not
        collected yet): what the image cache must keep."""
        found: list[Path] = []
        for pdir in self.parts.iterdir():
            if pdir.name.startswith("."):
                continue
            meta = _read_json(pdir / "meta.json")
            spec = meta.get("spec") if isinstance(meta, dict) else None
            root = spec.get("root") if isinstance(spec, dict) else None
            if isinstance(root, str):
                found.append(Path(root))
        return found

    def get(self, name: str) -> WorkerHandle | None:
        with self._lock:
            return self._handles.get(name)

    def forget(self, name: str) -> None:
        """Remove the partition's directory; refused while its worker runs."""
        with self._lock:
            handle = self._handles.get(name) or self._load(self.parts / name)
            if handle is not None and handle.poll() is None:
                raise WorkerError(f"partition {name!r} is still running")
            if handle is not None:
                handle._close()
            self._handles.pop(name, None)
            self._remove_dir(name)

    def _remove_dir(self, name: str) -> None:
        """Rename first (atomic: the name is free at once), then delete at leisure."""
        trash = self.parts / f".gone-{name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(self.parts / name, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
