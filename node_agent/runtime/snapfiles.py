"""Saving and restoring the syscall layer's files: the fd table and the upper layer.

Open files are recorded by guest path, flags and offset and reopened through the sandbox on
restore (after the upper layer has been unpacked), so no host path ends up in a state file.
The upper layer travels inside the state file as a tar (bounded by ``UPPER_LIMITS``), unpacked
on restore by the strict unpacker of archive.py.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tarfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from .archive import ArchiveError, Limits, open_root, packing_filter, unpack
from .eventfd import EventFd
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
    hold_files,
)
from .fs import VIRTUAL_DEVICES
from .sockets import UnixSocket, names_of
from .syscalls.polling import EpollFile, Interest

if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["save_files", "restore_files", "write_upper", "read_upper", "UPPER_LIMIT"]

UPPER_LIMIT = 4 << 30          # bytes of the layer's tar stream in a state file
UPPER_MEMBERS = 1_000_000      # files, directories and links in it
UPPER_LIMITS = Limits(max_members=UPPER_MEMBERS, max_bytes=UPPER_LIMIT, fifos=True)
_O_APPEND = 0o2000


def save_files(fds: FdTable) -> dict[str, Any]:
    """One fd table as JSON-able data (save_fd_tables with one table)."""
    data = save_fd_tables([fds])
    data["fds"] = data.pop("tables")[0]
    return data


def save_fd_tables(tables: list[FdTable]) -> dict[str, Any]:
    """Every process's fd table as JSON-able data: descriptions shared between tables
    (after fork) or within one (dup) stay shared, pipes keep their pages, eventfds their
    counters, sockets their buffers, peers and pending connections, epoll instances their
    interests (by description)."""
    saver = _Saver()
    out: list[list[list[int]]] = []
    for fds in tables:
        table: list[list[int]] = []
        with fds.lock:
            for fd, file in sorted(fds.files.items()):
                table.append([fd, saver.desc(file), int(fd in fds.cloexec)])
        out.append(table)
    return {"descs": saver.descs, "tables": out, "pipes": saver.pipes,
            "sockets": saver.sockets, "format": FILES_FORMAT}


#: 2: pipes as lists of pages, eventfd/socket/epoll descriptions (1: pipes as one hex string)
FILES_FORMAT = 2


class _Saver:
    def __init__(self) -> None:
        self.descs: list[dict[str, Any]] = []
        self.index: dict[int, int] = {}
        self.pipes: list[list[str]] = []
        self.pipe_index: dict[int, int] = {}
        self.sockets: list[dict[str, Any]] = []
        self.sock_index: dict[int, int] = {}

    def desc(self, file: OpenFile) -> int:
        if id(file) not in self.index:
            self.index[id(file)] = len(self.descs)
            self.descs.append({})
            self.descs[self.index[id(file)]] = self._describe(file)
        return self.index[id(file)]

    def _describe(self, file: OpenFile) -> dict[str, Any]:
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
            rec.update(kind="pipe", pipe=self.pipe(file.buf), write_end=file.write_end)
        elif isinstance(file, EventFd):
            rec.update(kind="eventfd", count=file.count, semaphore=file.semaphore)
        elif isinstance(file, UnixSocket):
            rec.update(kind="socket", socket=self.socket(file))
        elif isinstance(file, EpollFile):
            rec.update(kind="epoll", interests=[
                [fd, self.desc(i.file), i.events, i.data, int(i.armed)]
                for fd, i in file.interests.items() if not i.file.released])
        else:
            raise RuntimeError(f"cannot save an open {type(file).__name__}")
        return rec

    def pipe(self, buf: PipeBuffer) -> int:
        if id(buf) not in self.pipe_index:
            self.pipe_index[id(buf)] = len(self.pipes)
            self.pipes.append([bytes(page).hex() for page in buf.pages])
        return self.pipe_index[id(buf)]

    def socket(self, sock: UnixSocket) -> int:
        if id(sock) in self.sock_index:
            return self.sock_index[id(sock)]
        index = self.sock_index[id(sock)] = len(self.sockets)
        self.sockets.append({})
        peer = sock.peer
        rec = {"kind": sock.kind, "flags": sock.flags,
               "name": None if sock.name is None else sock.name.hex(),
               "abstract": sock.name is not None and sock.path_key is None,
               "listening": sock.listening, "backlog_max": sock.backlog_max,
               "connected": sock.connected, "peer_closed": sock.peer_closed,
               "shut": [sock.shut_rd, sock.shut_wr], "stream": bytes(sock.stream).hex(),
               "messages": [[d.hex(), None if n is None else n.hex(),
                             [self.desc(f) for f in files]]
                            for d, n, files in sock.messages],
               "marks": [[start, end, [self.desc(f) for f in files]]
                         for start, end, files in sock.marks],
               "peer": None if peer is None or peer.released else self.socket(peer),
               "backlog": [self.socket(s) for s in sock.backlog]}
        self.sockets[index] = rec
        return index


def restore_files(machine: Machine, data: dict[str, Any]) -> FdTable:
    """Rebuild one fd table (save_files's data)."""
    return restore_fd_tables(machine, data)[0]


def restore_fd_tables(machine: Machine, data: dict[str, Any]) -> list[FdTable]:
    """Rebuild the fd tables (save_fd_tables's data, in its order); host files are reopened
    by guest path with their offsets."""
    cond = machine.sched.cond
    pipes: list[PipeBuffer] = []
    for saved in data["pipes"]:
        buf = PipeBuffer(cond)
        pages = [saved[i:i + 2 * PipeBuffer.PAGE] for i in range(0, len(saved),
                                                                2 * PipeBuffer.PAGE)] \
            if isinstance(saved, str) else saved          # format 1: one hex string
        for page in pages:
            buf.pages.append(bytearray(bytes.fromhex(page)))
            buf.size += len(buf.pages[-1])
        pipes.append(buf)
    sockets = _restore_sockets(machine, data.get("sockets", []))
    files: list[OpenFile | None] = [None] * len(data["descs"])

    def get(idx: int) -> OpenFile:
        found = files[idx]
        if found is None:
            found = files[idx] = _reopen(machine, data["descs"][idx], pipes, sockets, get)
        return found

    def described(idx: object) -> OpenFile:
        if not isinstance(idx, int) or not 0 <= idx < len(files):
            raise ValueError(f"a saved reference names description {idx}, which is not saved")
        return get(idx)

    tables: list[FdTable] = []
    for saved in data["tables"] if "tables" in data else [data["fds"]]:
        fds = FdTable()
        for fd, idx, cloexec in saved:
            fds._install(int(fd), described(idx), bool(cloexec))
        tables.append(fds)
    _restore_in_flight(sockets, data.get("sockets", []), described)
    return tables


def _restore_in_flight(sockets: list[UnixSocket], recs: list[dict[str, Any]],
                       described: Callable[[object], OpenFile]) -> None:
    """Descriptions passed with SCM_RIGHTS and not yet received (each holds a reference)."""
    for sock, rec in zip(sockets, recs, strict=True):
        for i, (_data, _sender, *rights) in enumerate(rec["messages"]):
            if rights and rights[0]:
                passed = [described(idx) for idx in rights[0]]
                hold_files(passed)
                data, sender, _ = sock.messages[i]
                sock.messages[i] = (data, sender, passed)
        for start, end, idxs in rec.get("marks", []):
            if not 0 <= int(start) < int(end) <= len(sock.stream):
                raise ValueError(f"passed descriptors at bytes {start}-{end} of a stream of "
                                 f"{len(sock.stream)}")
            passed = [described(idx) for idx in idxs]
            hold_files(passed)
            sock.marks.append((int(start), int(end), passed))


def _restore_sockets(machine: Machine, recs: list[dict[str, Any]]) -> list[UnixSocket]:
    names = names_of(machine)
    cond = machine.sched.cond
    made = [UnixSocket(int(r["kind"]), cond, names, int(r["flags"])) for r in recs]
    for sock, rec in zip(made, recs, strict=True):
        sock.name = None if rec["name"] is None else bytes.fromhex(rec["name"])
        if sock.name is not None and rec["abstract"]:
            names.abstract[sock.name] = sock
        sock.listening, sock.backlog_max = bool(rec["listening"]), int(rec["backlog_max"])
        sock.connected, sock.peer_closed = bool(rec["connected"]), bool(rec["peer_closed"])
        sock.shut_rd, sock.shut_wr = (bool(v) for v in rec["shut"])
        sock.stream += bytes.fromhex(rec["stream"])
        for hexdata, sender, *_rights in rec["messages"]:
            msg = bytes.fromhex(hexdata)
            sock.messages.append((msg, None if sender is None else bytes.fromhex(sender), []))
            sock.queued += len(msg)
        sock.peer = None if rec["peer"] is None else made[int(rec["peer"])]
        sock.backlog.extend(made[int(i)] for i in rec["backlog"])
    return made


def _reopen(machine: Machine, rec: dict[str, Any], pipes: list[PipeBuffer],
            sockets: list[UnixSocket], get: Callable[[int], OpenFile]) -> OpenFile:
    kind, flags, gpath = rec["kind"], int(rec["flags"]), str(rec["gpath"])
    if kind == "console":
        return ConsoleFile(flags, machine.console, int(rec["fd"]))
    if kind == "device":
        return DeviceFile(flags, gpath, VIRTUAL_DEVICES[gpath])
    if kind == "pipe":
        return PipeEnd(flags, pipes[int(rec["pipe"])], bool(rec["write_end"]), gpath)
    if kind == "eventfd":
        return EventFd(flags, machine.sched.cond, int(rec["count"]), bool(rec["semaphore"]))
    if kind == "socket":
        return sockets[int(rec["socket"])]
    if kind == "epoll":
        ep = EpollFile(flags)
        for fd, idx, events, value, armed in rec["interests"]:
            interest = Interest(get(int(idx)), int(events), int(value))
            interest.armed = bool(armed)
            ep.interests[int(fd)] = interest
        return ep
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
    except OSError as err:       # a path past PATH_MAX (a guest can build one): no host path
        reason = ("a path in it is longer than 4095 bytes" if err.errno == errno.ENAMETOOLONG
                  else err.strerror or "unreadable")
        raise RuntimeError(f"the writable layer cannot be saved: {reason}") from None


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
