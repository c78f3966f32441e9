"""WorkerHandle's lifecycle requests: pause, resume, save (Saved state), checkpoint.

Each is one request on the worker's control socket (worker_main.py: ops Z/R/V/C with a JSON
payload); the worker replies b"k" or b"e" + u32 length + message, which becomes WorkerError.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .spec import ExitStatus
from .worker_main import FRAME, OP_CHECKPOINT, OP_PAUSE, OP_RESUME, OP_SAVE

__all__ = ["LifecycleMixin", "WorkerError"]


class WorkerError(Exception):
    """A worker could not be launched or addressed (name in use, fork server down, ...)."""


class LifecycleMixin:
    """Needs name, dir, _lock, _ctl, poll() and wait() from WorkerHandle."""

    name: str
    dir: Path
    _lock: threading.Lock
    _ctl: socket.socket | None

    if TYPE_CHECKING:  # provided by WorkerHandle
        def poll(self) -> ExitStatus | None: ...

        def wait(self, timeout: float | None = None) -> ExitStatus | None: ...

    def pause(self, timeout: float = 10.0) -> None:
        """Every vCPU stopped, guest threads parked; WorkerError if that fails/times out."""
        self._lifecycle(OP_PAUSE, {"timeout": timeout}, timeout, "pause")

    def resume(self) -> None:
        self._lifecycle(OP_RESUME, {}, 10.0, "resume")

    def save(self, path: Path, timeout: float = 120.0) -> None:
        """Pause, write the state to ``path``, end the worker. Returns once the file is
        complete and the worker has exited: poll() is then ExitStatus(saved=True)."""
        deadline = time.monotonic() + timeout
        self._lifecycle(OP_SAVE, {"path": str(Path(path).resolve()),
                                  "timeout": min(10.0, timeout)}, timeout, "save")
        status = self.wait(max(deadline - time.monotonic(), 1.0))
        if status is None or not status.saved:
            raise WorkerError(f"{self.name}: worker did not end as saved: {status}")

    def checkpoint(self, path: Path, timeout: float = 120.0) -> None:
        """Pause, write the state to ``path``, resume (the guest continues)."""
        self._lifecycle(OP_CHECKPOINT, {"path": str(Path(path).resolve()),
                                        "timeout": min(10.0, timeout)}, timeout, "checkpoint")

    def _lifecycle(self, op: bytes, args: dict[str, Any], timeout: float, what: str) -> None:
        if self.poll() is not None:
            raise WorkerError(f"{self.name}: cannot {what}: the worker has ended")
        payload = json.dumps(args).encode()
        deadline = time.monotonic() + timeout + 5.0
        with self._lock:
            try:
                if self._ctl is None:
                    self._ctl = self._connect_when_ready(5.0)
                self._ctl.settimeout(max(deadline - time.monotonic(), 0.1))
                self._ctl.sendall(FRAME.pack(op, len(payload)) + payload)
                code = _recv_all(self._ctl, 1)
                if code == b"e":
                    (size,) = struct.unpack("<I", _recv_all(self._ctl, 4))
                    message = _recv_all(self._ctl, size).decode(errors="replace")
                    self._ctl.settimeout(2.0)
                    raise WorkerError(f"{self.name}: {what} failed: {message}")
                if code != b"k":
                    raise ConnectionError("unexpected reply")
                self._ctl.settimeout(2.0)
            except OSError as exc:
                if self._ctl is not None:
                    self._ctl.close()
                    self._ctl = None
                raise WorkerError(f"{self.name}: {what} failed: {exc}") from exc



    def _connect_when_ready(self, timeout: float) -> socket.socket:
        """Connect to the worker's control socket, waiting while a just-launched worker has
        not created it yet (a SAVE sent right after RUNNING otherwise failed with ENOENT)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return _connect(self.dir, deadline - time.monotonic())
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() >= deadline or self.poll() is not None:
                    raise
                time.sleep(0.01)


def _recv_all(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("control socket closed")
        buf += chunk
    return bytes(buf)


def _connect(pdir: Path, timeout: float) -> socket.socket:
    """Connect to ctl.sock through /proc/self/fd: sun_path is limited to 108 bytes."""
    dirfd = os.open(pdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(timeout, 0.05))
        sock.connect(f"/proc/self/fd/{dirfd}/ctl.sock")
        return sock
    except OSError:
        sock.close()
        raise
    finally:
        os.close(dirfd)
