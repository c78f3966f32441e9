"""Console implementations: the host terminal (for ``python -m``) and an in-memory buffer."""

from __future__ import annotations

import os
import threading

__all__ = ["TerminalConsole", "BufferConsole"]


class TerminalConsole:
    """Guest stdio is this process's stdin/stdout/stderr."""

    def write(self, fd: int, data: bytes) -> None:
        target = 2 if fd == 2 else 1
        view = memoryview(data)
        while view:
            written = os.write(target, view)
            view = view[written:]

    def read_stdin(self, n: int) -> bytes:
        try:
            return os.read(0, n)
        except OSError:
            return b""


class BufferConsole:
    """Collects guest output in memory; stdin is a fixed byte string (then EOF)."""

    def __init__(self, stdin: bytes = b"", limit: int = 64 << 20) -> None:
        self._stdin = stdin
        self._limit = limit
        self._lock = threading.Lock()
        self.stdout = bytearray()
        self.stderr = bytearray()

    def write(self, fd: int, data: bytes) -> None:
        with self._lock:
            buf = self.stderr if fd == 2 else self.stdout
            room = self._limit - len(buf)
            if room > 0:
                buf += data[:room]

    def read_stdin(self, n: int) -> bytes:
        with self._lock:
            chunk, self._stdin = self._stdin[:n], self._stdin[n:]
            return chunk
