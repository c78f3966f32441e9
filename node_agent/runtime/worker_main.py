"""Inside a worker process: one partition's Machine, its files and its control socket.

The fork server forks, and the child calls `worker_entry()`; it never returns. Files in the
partition directory (see workers.py for the whole list):

  ctl.sock      control socket: requests are 1 op byte + u32 length + payload, reply b"k"
                (ops: P ping, S stop with an optional JSON payload {"grace": s} (Shut
                Down: SIGTERM to every guest process, turned off s seconds later; none or 0:
                at once), I stdin data, E stdin end-of-file). Lifecycle ops
                take a JSON payload {"timeout": s, "path": state file} and reply b"k", or
                b"e" + u32 length + UTF-8 message on failure: Z pause, R resume,
                V save (pause, write the state, end the worker: status.json "saved"),
                C checkpoint (pause, write the state, resume).
  console.log   output ring (worker_console.py)
  events.jsonl  one {"t", "reason", "message"} object a line, what the Machine reported
  status.json   written atomically when the Machine returns: exit_code, failed_reason,
                unknown_syscalls, saved, finished_at
  syscalls.bin  syscalls made, by number (syscall_counts.py), read by the agent's metrics
  ready         written just before Machine.run(): {"t": wall time, "mono": monotonic}
  worker.log    the worker's own stderr: Python tracebacks, faulthandler dumps on SIGSEGV
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .spec import ExitStatus, PartitionSpec
from .syscall_counts import SYSCALLS_FILE, SyscallCounts
from .watchdog_file import WATCHDOG_FILE, read_deadline
from .worker_console import ConsoleRing, WorkerConsole

__all__ = ["worker_entry", "write_json_atomic", "load_machine_class", "WorkerLimits",
           "OP_PING", "OP_STOP", "OP_STDIN", "OP_EOF", "OP_PAUSE", "OP_RESUME", "OP_SAVE",
           "OP_CHECKPOINT", "LIFECYCLE_OPS", "FRAME"]

OP_PING, OP_STOP, OP_STDIN, OP_EOF = b"P", b"S", b"I", b"E"
OP_PAUSE, OP_RESUME, OP_SAVE, OP_CHECKPOINT = b"Z", b"R", b"V", b"C"
LIFECYCLE_OPS = (OP_PAUSE, OP_RESUME, OP_SAVE, OP_CHECKPOINT)
FRAME = struct.Struct("<cI")
MAX_EVENTS = 10_000
MAX_FRAME = 1 << 20
MAX_STOP_GRACE_S = 3600.0  # the controller refuses more; a bad payload stops at once


class WorkerLimits:
    """Hard limits applied in the worker before the guest starts. No RLIMIT_AS: guest
    memory is one MAP_NORESERVE mapping that may be 64 GiB; the runtime bounds its use."""

    nofile = 1024
    console_rate = 256 << 10  # bytes per second, with a burst of console_burst
    console_burst = 1 << 20


class _MachineLike(Protocol):
    def run(self) -> ExitStatus: ...

    def stop(self, grace: float = 0.0) -> None: ...

    def pause(self, timeout: float = 10.0) -> None: ...

    def resume(self) -> None: ...

    def save_state(self, path: Path) -> Any: ...

    def end_saved(self) -> None: ...

    def count_syscalls(self, counts: SyscallCounts) -> None: ...


MachineFactory = Callable[..., _MachineLike]


def load_machine_class(path: str) -> MachineFactory:
    """'package.module:Name' → the class (imported in the fork server, before forking)."""
    module, _, attr = path.partition(":")
    factory: MachineFactory = getattr(importlib.import_module(module), attr or "Machine")
    return factory


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Events:
    """Appends what the Machine reports to events.jsonl (bounded)."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", buffering=1)
        self._n = 0
        self._lock = threading.Lock()

    def __call__(self, reason: str, message: str) -> None:
        with self._lock:
            self._n += 1
            if self._n > MAX_EVENTS:
                return
            if self._n == MAX_EVENTS:
                reason, message = "EventsDropped", f"more than {MAX_EVENTS} events; rest dropped"
            self._f.write(json.dumps({"t": time.time(), "reason": reason,
                                      "message": message}) + "\n")


class _Control:
    """Serves ctl.sock on a daemon thread: stop requests and stdin for the guest."""

    def __init__(self, path: Path, console: WorkerConsole, stop: Callable[[float], None],
                 lifecycle: Callable[[bytes, dict[str, Any]], Callable[[], None] | None]
                 ) -> None:
        self._console, self._stop, self._lifecycle = console, stop, lifecycle
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound relative to the cwd (the partition dir): sun_path holds only 108 bytes.
        tmp = Path(".ctl.sock.tmp")
        tmp.unlink(missing_ok=True)
        self._sock.bind(tmp.name)
        self._sock.listen(8)
        os.replace(tmp, path.name)  # appears only once it accepts connections
        threading.Thread(target=self._serve, name="worker-ctl", daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self._sock.accept()
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            while True:
                head = _recv_exact(conn, FRAME.size)
                if head is None:
                    return
                op, size = FRAME.unpack(head)
                payload = _recv_exact(conn, size) if 0 < size <= MAX_FRAME else b""
                if payload is None:
                    return
                if op in LIFECYCLE_OPS:
                    reply, after = self._run_lifecycle(op, payload)
                    try:
                        conn.sendall(reply)
                    finally:
                        if after is not None:   # a save ends the worker only once replied
                            after()
                    continue
                if op == OP_STOP:
                    self._stop(stop_grace(payload))
                elif op == OP_STDIN:
                    self._console.feed_stdin(payload)
                elif op == OP_EOF:
                    self._console.close_stdin()
                conn.sendall(b"k")


    def _run_lifecycle(self, op: bytes,
                       payload: bytes) -> tuple[bytes, Callable[[], None] | None]:
        try:
            args = json.loads(payload or b"{}")
            after = self._lifecycle(op, args if isinstance(args, dict) else {})
            return b"k", after
        except Exception as exc:  # noqa: BLE001 - reported to the caller, never fatal
            msg = (str(exc) or type(exc).__name__).encode()[:4000]
            return b"e" + struct.pack("<I", len(msg)) + msg, None


def stop_grace(payload: bytes) -> float:
    """The grace an OP_STOP payload asks for; anything malformed means at once (0)."""
    try:
        grace = json.loads(payload or b"{}").get("grace", 0.0)
        grace = float(grace)
    except (ValueError, TypeError, AttributeError, OverflowError):
        return 0.0
    return min(grace, MAX_STOP_GRACE_S) if grace > 0.0 else 0.0  # NaN fails "> 0"


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class _Watchdog:
    """Stops the guest once the agent's contact deadline has passed (self-fencing).

    The agent writes its contact deadline (CLOCK_BOOTTIME seconds) to RUN_DIR/watchdog
    each time a controller's ack moves it; a frozen, hung or cut-off agent stops moving it.
    Once boot time passes the deadline this worker stops its guest on its own, so a
    partition never runs on after its node may have been declared lost, even if the agent
    cannot act. No file: no agent, no watchdog. A small file read at most every 0.25 s.
    """

    POLL_MAX_S = 0.25
    POLL_MIN_S = 0.02
    NO_FILE_S = 0.5

    def __init__(self, machine: _MachineLike, path: Path, events: _Events) -> None:
        self.machine = machine
        self.path = path
        self.events = events
        self.fenced = ""
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    def _watch(self) -> None:
        while not self.fenced:
            deadline = read_deadline(self.path)
            if deadline is None:
                time.sleep(self.NO_FILE_S)
                continue
            left = deadline - time.clock_gettime(time.CLOCK_BOOTTIME)
            if left <= 0:
                late = "" if left == float("-inf") else f" ({-left:.2f}s ago)"
                self.fenced = ("fenced: the node agent's contact deadline with the "
                               f"controllers passed{late}")
                self.events("Fenced", self.fenced)
                self.machine.stop()  # Turn Off (grace 0): a fenced node lets no guest run on
                return
            # Wake at the deadline (it may have moved by then), never sleep long.
            time.sleep(min(max(left, self.POLL_MIN_S), self.POLL_MAX_S))


def _apply_limits(limits: type[WorkerLimits]) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no 64 GiB core files


def _detach(pdir: Path) -> None:
    """New session (outlives agent and fork server), default signals, stdio to files."""
    os.setsid()
    os.chdir(pdir)
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    log = os.open(pdir / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)
    faulthandler.enable(file=sys.stderr, all_threads=True)


def _set_comm(name: str) -> None:
    """Name the process (ps/top show 'vw-<partition>', 15 bytes at most)."""
    import ctypes

    pr_set_name = 15
    ctypes.CDLL(None).prctl(pr_set_name, name.encode()[:15], 0, 0, 0)


def _status_dict(status: ExitStatus) -> dict[str, Any]:
    return {"exit_code": status.exit_code, "failed_reason": status.failed_reason,
            "unknown_syscalls": {str(k): v for k, v in status.unknown_syscalls.items()},
            "saved": status.saved, "finished_at": time.time()}


def worker_entry(pdir: Path, spec: PartitionSpec, stdin: bool, factory: MachineFactory,
                 limits: type[WorkerLimits] = WorkerLimits, restore: Path | None = None) -> None:
    """Run the partition in this (freshly forked) process, write status.json, exit."""
    code = 0
    try:
        _detach(pdir)
        _set_comm(f"vw-{spec.name}")
        _apply_limits(limits)
        status = _run(pdir, spec, stdin, factory, limits, restore)
        write_json_atomic(pdir / "status.json", _status_dict(status))
    except BaseException:  # noqa: B036 - nothing may escape into the fork server's code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(pdir: Path, spec: PartitionSpec, stdin: bool, factory: MachineFactory,
         limits: type[WorkerLimits], restore: Path | None = None) -> ExitStatus:
    ring = ConsoleRing(pdir / "console.log")
    console = WorkerConsole(ring, stdin, limits.console_rate, limits.console_burst)
    events = _Events(pdir / "events.jsonl")
    stop_requested = threading.Event()
    machine: _MachineLike | None = None

    def stop(grace: float = 0.0) -> None:
        stop_requested.set()
        if machine is not None and grace > 0:
            machine.stop(grace)  # Shut Down: SIGTERM first, so that is what the guest sees
        elif machine is not None:
            machine.stop()  # Turn Off (grace 0): the plain call every Machine takes
        console.close_stdin()  # a guest blocked reading stdin must wake up

    def lifecycle(op: bytes, args: dict[str, Any]) -> Callable[[], None] | None:
        if machine is None:
            raise RuntimeError("the partition is not running yet")
        return _lifecycle_op(machine, op, args, events)

    signal.signal(signal.SIGTERM, lambda _sig, _frame: stop(0.0))
    _Control(pdir / "ctl.sock", console, stop, lifecycle)
    try:
        if restore is not None:
            restorer: Any = factory        # the Machine class: Machine.restore
            machine = restorer.restore(spec, console, restore, events)
        else:
            machine = factory(spec, console, events)
    except Exception as exc:  # a bad image etc.: the partition fails, with the reason
        return ExitStatus(None, f"{type(exc).__name__}: {exc}", {})
    machine.count_syscalls(SyscallCounts(pdir / SYSCALLS_FILE))
    if stop_requested.is_set():
        machine.stop()  # Turn Off: stopped before the guest began, nothing to shut down
    watchdog = _Watchdog(machine, pdir.parent.parent / WATCHDOG_FILE, events)
    write_json_atomic(pdir / "ready", {"t": time.time(), "mono": time.monotonic()})
    try:
        status = machine.run()
    except Exception as exc:
        return ExitStatus(None, f"runtime error: {type(exc).__name__}: {exc}", {})
    finally:
        ring.close()
    if watchdog.fenced and not status.saved:
        return ExitStatus(None, watchdog.fenced, status.unknown_syscalls)
    return status


_LIFECYCLE_LOCK = threading.Lock()


def _lifecycle_op(machine: _MachineLike, op: bytes, args: dict[str, Any],
                  events: Callable[[str, str], None]) -> Callable[[], None] | None:
    """Pause/resume/save/checkpoint, one at a time; raises with a message on failure.
    For a save, returns what ends the worker (called once the reply is sent)."""
    timeout = float(args.get("timeout", 10.0))
    with _LIFECYCLE_LOCK:
        if op == OP_PAUSE:
            machine.pause(timeout)
            events("Paused", "all vCPUs stopped")
        elif op == OP_RESUME:
            machine.resume()
            events("Resumed", "vCPUs running again")
        else:
            path = Path(str(args["path"]))
            was_paused = bool(getattr(machine, "paused", False))
            machine.pause(timeout)
            try:
                info = machine.save_state(path)
            except BaseException:
                if not was_paused:
                    machine.resume()
                raise
            detail = f"state written to {path.name}: {info}"
            if op == OP_SAVE:
                events("Saved", detail)
                return machine.end_saved
            events("Checkpointed", detail)
            if not was_paused:
                machine.resume()
    return None
