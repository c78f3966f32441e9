"""Saving and restoring the syscall layer's files: the fd table and the upper layer.

Open files are recorded by guest path, flags and offset and reopened through the sandbox on
restore (after the upper layer has been unpacked), so no host path ends up in a state file.
The upper layer travels inside the state file as a tar (bounded by ``UPPER_LIMITS``), unpacked
on restore by the strict unpacker of archive.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tarfile
from typing import TYPE_CHECKING, Any, BinaryIO

from .archive import ArchiveError, Limits, open_root, packing_filter, unpack
from .files import (
    O_ACCMODE,
    ConsoleFile,
    DeviceFile,
    DirFile,
    FdTable,
    HostFile,
    OpenFile,
    PipeBuffer,
    PipeEnd,
    StatInfo,
)
from .fs import VIRTUAL_DEVICES

if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["save_files", "restore_files", "write_upper", "read_upper", "UPPER_LIMIT"]

UPPER_LIMIT = 4 << 30          # bytes of the layer's tar stream in a state file
UPPER_MEMBERS = 1_000_000      # files, directories and links in it
UPPER_LIMITS = Limits(max_members=UPPER_MEMBERS, max_bytes=UPPER_LIMIT)
_O_APPEND = 0o2000


def save_files(fds: FdTable) -> dict[str, Any]:
    """The fd table as JSON-able data (shared descriptions and pipe buffers kept shared)."""
    descs: list[dict[str, Any]] = []
    index: dict[int, int] = {}
    pipes: list[PipeBuffer] = []
    table: list[list[int]] = []
    with fds.lock:
        for fd, file in sorted(fds.files.items()):
            if id(file) not in index:
                index[id(file)] = len(descs)
                descs.append(_describe(file, pipes))
            table.append([fd, index[id(file)], int(fd in fds.cloexec)])
    return {"descs": descs, "fds": table, "pipes": [bytes(p.data).hex() for p in pipes]}


def _describe(file: OpenFile, pipes: list[PipeBuffer]) -> dict[str, Any]:
    rec: dict[str, Any] = {"flags": file.flags, "gpath": file.gpath}
    if isinstance(file, ConsoleFile):
        rec.update(kind="console", fd=file.fd)
    elif isinstance(file, HostFile):
        rec.update(kind="host", offset=os.lseek(file.fd, 0, os.SEEK_CUR))
    elif isinstance(file, DirFile):
        rec.update(kind="dir", pos=file.pos, entries=file.entries[2:],
                   info=dataclasses.asdict(file.info))
    elif isinstance(file, DeviceFile):
        rec.update(kind="device")
    elif isinstance(file, PipeEnd):
        if file.buf not in pipes:
            pipes.append(file.buf)
        rec.update(kind="pipe", pipe=pipes.index(file.buf), write_end=file.write_end)
    else:
        raise RuntimeError(f"cannot save an open {type(file).__name__}")
    return rec


def restore_files(machine: Machine, data: dict[str, Any]) -> FdTable:
    """Rebuild the fd table; host files are reopened by guest path with their offsets."""
    pipes: list[PipeBuffer] = []
    for hexdata in data["pipes"]:
        buf = PipeBuffer()
        buf.data += bytes.fromhex(hexdata)
        pipes.append(buf)
    files = [_reopen(machine, rec, pipes) for rec in data["descs"]]
    fds = FdTable()
    for fd, idx, cloexec in data["fds"]:
        fds._install(fd, files[idx], bool(cloexec))
    return fds


def _reopen(machine: Machine, rec: dict[str, Any], pipes: list[PipeBuffer]) -> OpenFile:
    kind, flags, gpath = rec["kind"], int(rec["flags"]), str(rec["gpath"])
    if kind == "console":
        return ConsoleFile(flags, machine.console, int(rec["fd"]))
    if kind == "device":
        return DeviceFile(flags, gpath, VIRTUAL_DEVICES[gpath])
    if kind == "pipe":
        return PipeEnd(flags, pipes[int(rec["pipe"])], bool(rec["write_end"]))
    if kind == "dir":
        entries = [(str(n), int(t), int(i)) for n, t, i in rec["entries"]]
        dfile = DirFile(flags, gpath, entries, StatInfo(**rec["info"]))
        dfile.pos = int(rec["pos"])
        return dfile
    found = machine.fs.host_path(gpath)
    if found is None:
        raise OSError(2, f"open file {gpath} is missing from the restored filesystem")
    fd = os.open(found[0], (flags & (O_ACCMODE | _O_APPEND)) | os.O_NOFOLLOW | os.O_CLOEXEC)
    os.lseek(fd, int(rec["offset"]), os.SEEK_SET)
    return HostFile(fd, flags, gpath)


def write_upper(upper: str, out: BinaryIO) -> None:
    """Tar the upper layer (relative names, no ownership) into ``out``; bounded. Every
    member passes the checker ``read_upper`` applies, so a save never writes a layer that
    a restore refuses (special mode bits, which a guest may set, are dropped here)."""
    total = 0
    for dirpath, _, names in os.walk(upper):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    if total > UPPER_LIMIT:
        raise RuntimeError(f"upper layer holds {total} bytes, over the {UPPER_LIMIT} limit "
                           "for a state file")
    clean = packing_filter(UPPER_LIMITS)

    counted: Any = _Counted(out, UPPER_LIMIT)
    try:
        with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(os.listdir(upper)):
                tar.add(os.path.join(upper, entry), arcname=entry, filter=clean)
    except ArchiveError as err:
        raise RuntimeError(f"the writable layer cannot be saved: {err}") from None


def read_upper(src: BinaryIO, length: int, upper: str) -> None:
    """Replace the upper layer's content with the tar in ``src`` (``length`` bytes), by the
    strict unpacker (archive.py): no devices, no links out, nothing followed. On a refused
    layer the upper layer is left empty and ArchiveError names the member."""
    _empty(upper)
    if length == 0:
        return
    bounded: Any = _Bounded(src, length)
    fd = open_root(upper)
    try:
        unpack(bounded, fd, UPPER_LIMITS, compressed=False)
    except ArchiveError as err:
        _empty(upper)
        raise ArchiveError(f"writable layer: {err}") from None
    except BaseException:
        _empty(upper)
        raise
    finally:
        os.close(fd)


def _empty(upper: str) -> None:
    for entry in os.listdir(upper):
        path = os.path.join(upper, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


class _Counted:
    """A write-only view of ``out`` that refuses to pass ``limit`` bytes (the bound
    ``read_upper`` applies to the same stream)."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out, self.limit, self.written = out, limit, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise RuntimeError(f"the writable layer exceeds the {self.limit} byte limit "
                               "for a state file")
        return self.out.write(data)


class _Bounded:
    """A read-only view of the next ``length`` bytes of ``src`` (for streaming tarfile)."""

    def __init__(self, src: BinaryIO, length: int) -> None:
        self.src, self.left = src, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.src.read(n)
        self.left -= len(data)
        return data
