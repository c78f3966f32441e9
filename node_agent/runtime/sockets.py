"""AF_UNIX sockets inside one partition: stream, datagram and seqpacket.

Nothing here touches a host socket: a socket bound to a path gets a socket node in the
partition's writable layer (made through the sandbox) and is found by that node's inode
number; abstract names (a leading NUL) live in a per-partition table. All state is guarded
by the partition scheduler's lock (``cond``), like pipes, and every change wakes the wait
queues of both ends (waitq.py), so blocked readers, writers, acceptors and pollers retry.
"""

from __future__ import annotations

import errno
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING

from .files import (
    O_RDWR,
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLOUT,
    POLLRDHUP,
    POLLRDNORM,
    POLLWRNORM,
    OpenFile,
    StatInfo,
    release_files,
)
from .waitq import WaitQueue

if TYPE_CHECKING:
    from .files import PipeBuffer

__all__ = ["UnixSocket", "Names", "names_of", "SOCK_STREAM", "SOCK_DGRAM", "SOCK_SEQPACKET"]

SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5
LIMIT = 212992                 # Linux's default socket buffer (net.core.wmem_default)
MAX_MESSAGES = 256             # queued datagrams per socket (net.unix.max_dgram_qlen 512)
MAX_BACKLOG = 4096
MAX_RIGHTS = 253               # descriptors in one SCM_RIGHTS message (Linux's SCM_MAX_FD)
MAX_MARKS = 256                # SCM_RIGHTS sends queued on one stream socket
S_IFSOCK = 0o140000


def _err(code: int) -> OSError:
    return OSError(code, errno.errorcode.get(code, "error"))


class Names:
    """What a partition's sockets and FIFOs are found by (one per partition)."""

    def __init__(self) -> None:
        self.abstract: dict[bytes, UnixSocket] = {}
        self.paths: dict[int, UnixSocket] = {}          # socket node inode -> bound socket
        self.fifos: dict[tuple[int, int], PipeBuffer] = {}
        self.autobind = 0


_NAMES: weakref.WeakKeyDictionary[object, Names] = weakref.WeakKeyDictionary()
_NAMES_LOCK = threading.Lock()


def names_of(kernel: object) -> Names:
    """The partition's name table (kept as long as the partition's machine lives)."""
    with _NAMES_LOCK:
        found = _NAMES.get(kernel)
        if found is None:
            found = _NAMES[kernel] = Names()
        return found


class UnixSocket(OpenFile):
    """One AF_UNIX socket (see the module docstring); read/write raise EAGAIN to block."""

    blocking = True

    def __init__(self, kind: int, cond: threading.Condition, names: Names, flags: int = 0
                 ) -> None:
        super().__init__((flags & ~3) | O_RDWR, "socket:")
        self.kind = kind
        self.cond = cond
        self.names = names
        self.message_writes = kind != SOCK_STREAM
        self.queue = WaitQueue()
        self.name: bytes | None = None        # b"\0..." abstract, else the path bytes
        self.path_key: int | None = None
        self.listening = False
        self.connected = False                # ever connected (stream/seqpacket)
        self.peer: UnixSocket | None = None
        self.peer_closed = False              # the peer's last descriptor went
        self.shut_rd = False
        self.shut_wr = False
        self.stream = bytearray()             # SOCK_STREAM incoming bytes
        #: (data, sender name, descriptions sent with it): datagram and seqpacket
        self.messages: deque[tuple[bytes, bytes | None, list[OpenFile]]] = deque()
        #: SOCK_STREAM: descriptions sent with SCM_RIGHTS, with the [start, end) offsets in
        #: ``stream`` of their send's bytes. As Linux's stream read, a read takes them when
        #: it reaches those bytes and ends with that send's last byte.
        self.marks: deque[tuple[int, int, list[OpenFile]]] = deque()
        self.queued = 0                       # bytes in ``messages``
        self.backlog: deque[UnixSocket] = deque()
        self.backlog_max = 0

    # -- connection set-up ------------------------------------------------------------------
    @staticmethod
    def pair(kind: int, cond: threading.Condition, names: Names, flags: int
             ) -> tuple[UnixSocket, UnixSocket]:
        a = UnixSocket(kind, cond, names, flags)
        b = UnixSocket(kind, cond, names, flags)
        a._join(b)
        return a, b

    def _join(self, other: UnixSocket) -> None:
        self.peer, other.peer = other, self
        self.connected = other.connected = True

    def bind_name(self, name: bytes, path_key: int | None) -> None:
        """Caller holds ``cond`` and has made the node (path) or checked the name free."""
        if self.name is not None:
            raise _err(errno.EINVAL)
        self.name = name
        if path_key is not None:
            self.path_key = path_key
            self.names.paths[path_key] = self
        else:
            self.names.abstract[name] = self

    def listen(self, backlog: int) -> None:
        if self.kind == SOCK_DGRAM:
            raise _err(errno.EOPNOTSUPP)
        if self.connected or self.name is None:
            raise _err(errno.EINVAL)
        self.listening = True
        self.backlog_max = max(1, min(backlog, MAX_BACKLOG))
        self._wake()

    def connect_to(self, target: UnixSocket) -> None:
        """Stream/seqpacket: queue a new server-side socket on the listener ``target``
        (EAGAIN while its backlog is full); datagram: set the default destination."""
        if self.kind == SOCK_DGRAM:
            if target.kind != SOCK_DGRAM:
                raise _err(errno.EPROTOTYPE)
            if target.released:
                raise _err(errno.ECONNREFUSED)
            self.peer = target
            return
        if self.listening:
            raise _err(errno.EINVAL)
        if self.connected:
            raise _err(errno.EISCONN)
        if target.kind != self.kind:
            raise _err(errno.EPROTOTYPE)
        if not target.listening or target.released:
            raise _err(errno.ECONNREFUSED)
        if len(target.backlog) >= target.backlog_max:
            raise _err(errno.EAGAIN)
        server = UnixSocket(self.kind, self.cond, self.names, O_RDWR)
        server.name = target.name
        self._join(server)
        target.backlog.append(server)
        target._wake()
        self._wake()

    def accept(self) -> UnixSocket:
        if not self.listening:
            raise _err(errno.EINVAL)
        if not self.backlog:
            raise _err(errno.EAGAIN)
        server = self.backlog.popleft()
        self._wake()
        return server

    # -- data --------------------------------------------------------------------------------
    def _wake(self) -> None:
        self.queue.wake_all()
        if self.peer is not None:
            self.peer.queue.wake_all()

    def _stream_target(self) -> UnixSocket:
        if not self.connected:
            raise _err(errno.ENOTCONN)
        peer = self.peer
        if self.shut_wr or self.peer_closed or peer is None or peer.shut_rd:
            raise _err(errno.EPIPE)
        return peer

    def write(self, data: bytes) -> int:
        return self.send(data, None)

    def send(self, data: bytes, target: UnixSocket | None,
             rights: list[OpenFile] | None = None) -> int:
        """Queue ``data`` (all of it, or for a stream what fits) for the peer or ``target``;
        ``rights`` (descriptions, each already holding a reference) travel with it and are
        the receiver's to release once the send succeeded."""
        with self.cond:
            if self.kind == SOCK_STREAM:
                if target is not None:
                    raise _err(errno.EISCONN if self.connected else errno.EOPNOTSUPP)
                peer = self._stream_target()
                room = LIMIT - len(peer.stream)
                if not data:
                    return 0
                if room <= 0:
                    raise _err(errno.EAGAIN)
                if rights and len(peer.marks) >= MAX_MARKS:
                    raise _err(errno.ETOOMANYREFS)
                moved = min(room, len(data))
                if rights:
                    start = len(peer.stream)
                    peer.marks.append((start, start + moved, rights))
                peer.stream += data[:moved]
                self._wake()
                return moved
            if self.kind == SOCK_SEQPACKET:
                if target is not None:
                    raise _err(errno.EISCONN if self.connected else errno.EOPNOTSUPP)
                dest = self._stream_target()
            else:
                if self.shut_wr:
                    raise _err(errno.EPIPE)
                dest_or_none = target if target is not None else self.peer
                if dest_or_none is None:
                    raise _err(errno.ENOTCONN)
                dest = dest_or_none
                if dest.released or dest.shut_rd:
                    raise _err(errno.ECONNREFUSED)
                if dest.kind != SOCK_DGRAM:
                    raise _err(errno.EPROTOTYPE)
                if dest.peer is not None and dest.peer is not self and \
                        not dest.peer.released:
                    raise _err(errno.EPERM)            # dest only hears its own peer
            if len(data) > LIMIT:
                raise _err(errno.EMSGSIZE)
            if dest.queued + len(data) > LIMIT or len(dest.messages) >= MAX_MESSAGES:
                raise _err(errno.EAGAIN)
            dest.messages.append((bytes(data), self.name, rights or []))
            dest.queued += len(data)
            dest.queue.wake_all()
            self._wake()
            return len(data)

    def read(self, n: int) -> bytes:
        if n == 0:
            return b""                  # read(2) of nothing returns at once (recv waits)
        data, _full, _sender, rights = self.recv(n, False)
        release_files(rights)           # read(2) on a socket drops passed descriptors
        return data

    def recv(self, n: int, peek: bool) -> tuple[bytes, int, bytes | None, list[OpenFile]]:
        """(data, its full length before truncation, sender name, descriptions passed with
        it: the caller installs them and releases the references they hold; none on a
        peek)."""
        with self.cond:
            if self.kind == SOCK_STREAM:
                if self.stream:
                    rights: list[OpenFile] = []
                    marks = self.marks
                    if marks and marks[0][0] < n:
                        n = min(n, marks[0][1])
                        if not peek:
                            rights = marks.popleft()[2]
                    out = bytes(self.stream[:n])
                    if not peek:
                        del self.stream[:n]
                        for i, (start, end, files) in enumerate(marks):
                            marks[i] = (start - len(out), end - len(out), files)
                        self._wake()
                    return out, len(out), None, rights
                if self.listening or not self.connected:
                    raise _err(errno.EINVAL if self.listening else errno.ENOTCONN)
                if self._eof():
                    return b"", 0, None, []
                raise _err(errno.EAGAIN)    # even for 0 bytes: Linux's read target is 1
            if self.messages:
                data, sender, passed = self.messages[0]
                if not peek:
                    self.messages.popleft()
                    self.queued -= len(data)
                    self._wake()
                return data[:n], len(data), sender, [] if peek else passed
            if self.kind == SOCK_SEQPACKET and not self.connected:
                raise _err(errno.ENOTCONN)
            if self._eof():
                return b"", 0, None, []
            raise _err(errno.EAGAIN)

    def _eof(self) -> bool:
        if self.shut_rd:
            return True
        if self.kind == SOCK_DGRAM:
            return False
        peer = self.peer
        return self.peer_closed or peer is None or peer.shut_wr

    def shutdown(self, how: int) -> None:
        if how not in (0, 1, 2):
            raise _err(errno.EINVAL)
        with self.cond:
            if self.kind != SOCK_DGRAM and not self.connected:
                raise _err(errno.ENOTCONN)
            if how in (0, 2):
                self.shut_rd = True
            if how in (1, 2):
                self.shut_wr = True
            self._wake()

    def unread(self) -> int:
        if self.kind == SOCK_STREAM:
            return len(self.stream)
        return len(self.messages[0][0]) if self.messages else 0

    # -- readiness ------------------------------------------------------------------------
    def poll_mask(self) -> int:
        if self.listening:
            return POLLIN | POLLRDNORM if self.backlog else 0
        mask = 0
        readable = bool(self.stream or self.messages)
        if self.kind != SOCK_DGRAM:
            peer = self.peer
            gone = self.peer_closed or (peer is not None and peer.shut_wr)
            if self.shut_rd or gone:
                mask |= POLLIN | POLLRDNORM | POLLRDHUP
            if (self.shut_rd and self.shut_wr) or self.peer_closed or not self.connected:
                mask |= POLLHUP
            if self.connected and not self.peer_closed and peer is not None and \
                    not self.shut_wr and not peer.shut_rd and \
                    (LIMIT - len(peer.stream) > 0 if self.kind == SOCK_STREAM
                     else peer.queued < LIMIT and len(peer.messages) < MAX_MESSAGES):
                mask |= POLLOUT | POLLWRNORM
            if self.connected and (self.peer_closed or (peer is not None and peer.shut_rd)):
                mask |= POLLERR if not self.peer_closed else 0
        else:
            if self.shut_rd:
                mask |= POLLIN | POLLRDNORM | POLLRDHUP
            dest = self.peer
            if dest is None or (dest.queued < LIMIT and len(dest.messages) < MAX_MESSAGES):
                mask |= POLLOUT | POLLWRNORM
        if readable:
            mask |= POLLIN | POLLRDNORM
        return mask

    def wait_queues(self) -> list[WaitQueue]:
        if self.peer is not None:
            return [self.queue, self.peer.queue]
        return [self.queue]

    def stat(self) -> StatInfo:
        return StatInfo.synthetic(S_IFSOCK | 0o777, ino=id(self) & 0xFFFFFF)

    def close(self) -> None:
        with self.cond:
            if self.name is not None and self.name.startswith(b"\0"):
                if self.names.abstract.get(self.name) is self:
                    del self.names.abstract[self.name]
            if self.path_key is not None and self.names.paths.get(self.path_key) is self:
                del self.names.paths[self.path_key]
            pending, self.backlog = self.backlog, deque()
            for server in pending:              # never accepted: their clients see EOF
                server.released = True
                server.close()
            peer = self.peer
            if peer is not None and peer.peer is self:
                peer.peer_closed = True
            self.stream.clear()
            in_flight = [f for _, _, files in self.marks for f in files]
            in_flight += [f for _, _, files in self.messages for f in files]
            self.marks.clear()
            self.messages.clear()
            self.queued = 0
            self._wake()
        release_files(in_flight)        # descriptions nobody will receive now
