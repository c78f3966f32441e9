"""The saved-state file: a small, documented, uncompressed binary container.

Layout (all integers little-endian)::

    header   magic b"VIRIDIAN-STATE\\0\\0" (16 bytes) | u32 version (3) | u32 flags (0)
    section  tag (4 ASCII bytes) | u64 payload length | payload       ... repeated
    last     tag b"END!" with length 0: the file is complete

Sections (snapshot.py writes and reads them). Version 3 holds every process of the
partition; version 2 (one process: META "memory", one MEMR section) is still read.

    META  JSON, UTF-8: arch, machine (uptime, clock, unknown-syscall counts), every address
          space's layout (memory.py ``layout``: allocations, brk, exec ranges, whether it
          was frozen by a fork, its zeroed and file-backed ranges, its memory group), the
          process tree (proctable.py: pid, ppid, pgid, sid, cwd, umask, exe, argv, zombie
          status, children, signal actions and timers, which address space and fd table),
          the fd tables with their shared descriptions (snapfiles.py), the threads (tid,
          process, state, pending registers, futex wait, remaining timeout, stdin wait,
          signal mask and pending set, clear_child_tid, GDT address; run queue; next id).
          No host path is stored: files are reopened by guest path on restore.
    CTXT  the Unicorn CPU context of every thread that has run (META order), each
          ``context_size`` bytes: CPUX86State up to end_reset_fields (all registers, FS/GS
          bases, GDTR, segment caches, x87/SSE state).
    G###  one per memory group (a memfd that address spaces share copy-on-write after a
          fork): u64 run count, (u64 offset, u64 length) per run, then the runs' bytes.
    M###  one per address space, same format: what it holds beyond its group's memfd
          (pages it wrote after a fork, its zeroed and file-backed ranges).
    UPPR  the partition's writable upper layer as a POSIX tar (so another node sees it).
    CONS  optional: the console's history (worker_console.py ConsoleRing.history: u64 end
          offset, u64 data length, u32 mark count, the marks, the last bytes), so the
          console survives save, move and restore.

No compression: guest pages are written straight from the guest mapping (zero-copy) and read
straight back into it; all-zero pages are skipped, which is where the size goes.
The writer produces ``path`` atomically: a temporary file in the same directory, fsync,
rename.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["StateWriter", "StateReader", "StateError", "VERSION", "MAGIC"]

MAGIC = b"VIRIDIAN-STATE\0\0"
VERSION = 3
#: Versions this runtime reads: 2 is one process (META "memory", MEMR), 3 any number.
READABLE = (2, 3)
_HEAD = struct.Struct("<16sII")
_SECTION = struct.Struct("<4sQ")
_CHUNK = 1 << 30


class StateError(ValueError):
    """The state file is truncated, of another version, or otherwise unusable."""


def write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view[:_CHUNK])
        view = view[n:]


class StateWriter:
    """Writes sections to a temporary file; ``commit`` renames it into place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        write_all(self.fd, _HEAD.pack(MAGIC, VERSION, 0))

    def section(self, tag: bytes, payload: bytes) -> None:
        write_all(self.fd, _SECTION.pack(tag, len(payload)))
        write_all(self.fd, payload)

    @contextlib.contextmanager
    def stream(self, tag: bytes) -> Iterator[int]:
        """Yield the raw fd positioned at the payload; the length is patched afterwards."""
        start = os.lseek(self.fd, 0, os.SEEK_CUR)
        write_all(self.fd, _SECTION.pack(tag, 0))
        yield self.fd
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        os.pwrite(self.fd, _SECTION.pack(tag, end - start - _SECTION.size), start)

    def commit(self) -> None:
        write_all(self.fd, _SECTION.pack(b"END!", 0))
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


class StateReader:
    """Indexes a state file's sections; payloads are read on demand."""

    def __init__(self, path: Path) -> None:
        self.file: BinaryIO = open(path, "rb")
        self.sections: dict[bytes, tuple[int, int]] = {}
        try:
            self._index()
        except BaseException:
            self.file.close()
            raise

    def _index(self) -> None:
        head = self.file.read(_HEAD.size)
        if len(head) < _HEAD.size or head[:16] != MAGIC:
            raise StateError("not a Viridian state file")
        _, version, _ = _HEAD.unpack(head)
        if version not in READABLE:
            raise StateError(f"state file version {version} (this runtime reads "
                             f"{', '.join(map(str, READABLE))})")
        self.version = version
        size = os.fstat(self.file.fileno()).st_size
        pos = _HEAD.size
        while True:
            raw = self.file.read(_SECTION.size)
            if len(raw) < _SECTION.size:
                raise StateError("state file is truncated (no END! section)")
            tag, length = _SECTION.unpack(raw)
            pos += _SECTION.size
            if tag == b"END!":
                return
            if pos + length > size:
                raise StateError(f"state file is truncated in section {tag!r}")
            self.sections[tag] = (pos, length)
            pos += length
            self.file.seek(pos)

    def read(self, tag: bytes) -> bytes:
        if tag not in self.sections:
            raise StateError(f"state file has no {tag!r} section")
        pos, length = self.sections[tag]
        self.file.seek(pos)
        return self.file.read(length)

    def open_section(self, tag: bytes) -> tuple[BinaryIO, int]:
        """The file positioned at the payload of ``tag``, and its length."""
        if tag not in self.sections:
            raise StateError(f"state file has no {tag!r} section")
        pos, length = self.sections[tag]
        self.file.seek(pos)
        return self.file, length

    def close(self) -> None:
        self.file.close()
