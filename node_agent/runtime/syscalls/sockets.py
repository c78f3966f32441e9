"""Socket syscalls: AF_UNIX only, inside the partition (sockets.py); any other family is
EAFNOSUPPORT, so no network traffic leaves a partition through them."""

from __future__ import annotations

import errno
import stat
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..files import O_NONBLOCK, OpenFile, hold_files, release_files
from ..sockets import MAX_RIGHTS, SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, UnixSocket, names_of
from .common import BLOCK, E, Handler, s32
from .io import MAX_IO, blocking_call, check_buffer, write_stream
from .paths import sandbox

if TYPE_CHECKING:
    from ..task import Task

AF_UNIX = 1
SOCK_NONBLOCK, SOCK_CLOEXEC = O_NONBLOCK, 0o2000000
MSG_PEEK, MSG_TRUNC, MSG_DONTWAIT, MSG_WAITALL, MSG_NOSIGNAL = 2, 0x20, 0x40, 0x100, 0x4000
MSG_CTRUNC, MSG_CMSG_CLOEXEC = 0x8, 0x40000000
SOL_SOCKET = 1
SCM_RIGHTS, SCM_CREDENTIALS = 1, 2
SO_TYPE, SO_ERROR, SO_SNDBUF, SO_RCVBUF, SO_PEERCRED, SO_ACCEPTCONN, SO_DOMAIN, SO_PROTOCOL = \
    3, 4, 7, 8, 17, 30, 39, 38
SUN_PATH = 108


def _sock(t: Task, fd: int) -> UnixSocket:
    file = t.fds.get(s32(fd))
    if not isinstance(file, UnixSocket):
        raise OSError(errno.ENOTSOCK, "not a socket")
    return file


def _new(t: Task, domain: int, kind: int, protocol: int) -> tuple[int, int]:
    """(socket type, file flags) after checking socket()'s arguments."""
    if s32(domain) != AF_UNIX:
        raise OSError(errno.EAFNOSUPPORT, "only AF_UNIX inside a partition")
    base = kind & 0xF
    if kind & ~(0xF | SOCK_NONBLOCK | SOCK_CLOEXEC):
        raise OSError(errno.EINVAL, "bad socket flags")
    if base not in (SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET):
        raise OSError(errno.ESOCKTNOSUPPORT, "socket type not supported")
    if s32(protocol) not in (0, AF_UNIX):
        raise OSError(errno.EPROTONOSUPPORT, "protocol not supported")
    return base, kind & SOCK_NONBLOCK


def sys_socket(t: Task, domain: int, kind: int, protocol: int, *_: int) -> int:
    base, flags = _new(t, domain, kind, protocol)
    sock = UnixSocket(base, t.kernel.sched.cond, names_of(t.kernel), flags)
    return t.fds.add(sock, cloexec=bool(kind & SOCK_CLOEXEC))


def sys_socketpair(t: Task, domain: int, kind: int, protocol: int, sv: int, *_: int) -> int:
    base, flags = _new(t, domain, kind, protocol)
    t.mem.write(sv, bytes(8))
    a, b = UnixSocket.pair(base, t.kernel.sched.cond, names_of(t.kernel), flags)
    try:
        fa, fb = t.fds.add_pair(a, b, cloexec=bool(kind & SOCK_CLOEXEC))
    except OSError:
        a.close()
        b.close()
        raise
    t.mem.write(sv, struct.pack("<ii", fa, fb))
    return 0


def _address(t: Task, addr: int, length: int) -> bytes:
    """The name in a sockaddr_un: b"\\0..." for an abstract name, else the path's bytes;
    b"" for an address that is the family alone."""
    length = s32(length)
    if length < 2 or length > 2 + SUN_PATH:
        raise OSError(errno.EINVAL, "bad address length")
    raw = t.mem.read(addr, length)
    (family,) = struct.unpack_from("<H", raw)
    if family != AF_UNIX:
        raise OSError(errno.EAFNOSUPPORT if family else errno.EINVAL, "not AF_UNIX")
    name = raw[2:]
    if name.startswith(b"\0"):
        return name
    return name.split(b"\0", 1)[0]


def _encode(name: bytes | None) -> bytes:
    if not name:
        return struct.pack("<H", AF_UNIX)
    return struct.pack("<H", AF_UNIX) + name + (b"" if name.startswith(b"\0") else b"\0")


def _put_address(t: Task, addr: int, len_ptr: int, name: bytes | None) -> None:
    if not addr or not len_ptr:
        return
    room = s32(t.mem.u32(len_ptr))
    if room < 0:
        raise OSError(errno.EINVAL, "bad address length")
    data = _encode(name)
    t.mem.write(addr, data[:room])
    t.mem.put_u32(len_ptr, len(data))


def _lookup(t: Task, name: bytes) -> UnixSocket:
    names = names_of(t.kernel)
    if name.startswith(b"\0"):
        found = names.abstract.get(name)
        if found is None:
            raise OSError(errno.ECONNREFUSED, "no such abstract name")
        return found
    info = sandbox(t).stat_at(name.decode("utf-8", "surrogateescape"), t.process.cwd)
    if not stat.S_ISSOCK(info.mode):
        raise OSError(errno.ECONNREFUSED, "not a socket")
    sock = names.paths.get(info.ino)
    if sock is None or sock.released:
        raise OSError(errno.ECONNREFUSED, "nobody listens there")
    return sock


def sys_bind(t: Task, fd: int, addr: int, length: int, *_: int) -> int:
    sock = _sock(t, fd)
    name = _address(t, addr, length)
    names = names_of(t.kernel)
    cond = t.kernel.sched.cond
    if not name:                                      # autobind: an abstract name
        with cond:
            names.autobind += 1
            name = b"\0" + b"%05x" % (names.autobind & 0xFFFFF)
    if name.startswith(b"\0"):
        with cond:
            if sock.name is not None:
                return E.INVAL
            if name in names.abstract:
                return -errno.EADDRINUSE
            sock.bind_name(name, None)
        return 0
    if sock.name is not None:
        return E.INVAL
    path = name.decode("utf-8", "surrogateescape")
    box = sandbox(t)
    try:
        box.mknod_at(path, t.process.cwd, S_IFSOCK | (0o777 & ~t.process.umask))
    except FileExistsError:
        return -errno.EADDRINUSE
    info = box.stat_at(path, t.process.cwd, follow=False)
    with cond:
        if sock.name is not None:
            return E.INVAL
        sock.bind_name(name, info.ino)
    return 0


S_IFSOCK = stat.S_IFSOCK


def sys_listen(t: Task, fd: int, backlog: int, *_: int) -> int:
    sock = _sock(t, fd)
    with t.kernel.sched.cond:
        sock.listen(s32(backlog))
    return 0


def sys_connect(t: Task, fd: int, addr: int, length: int, *_: int) -> int:
    sock = _sock(t, fd)
    name = _address(t, addr, length)
    if not name:
        return E.INVAL
    target = _lookup(t, name)
    return blocking_call(t, sock, lambda: _connect(sock, target), queues=[target.queue])


def _connect(sock: UnixSocket, target: UnixSocket) -> int:
    sock.connect_to(target)
    return 0


def _accept(t: Task, fd: int, addr: int, len_ptr: int, flags: int) -> int:
    if flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC):
        return E.INVAL
    sock = _sock(t, fd)
    if len_ptr:
        t.mem.u32(len_ptr)

    def attempt() -> int:
        server = sock.accept()
        server.flags |= flags & SOCK_NONBLOCK
        try:
            new = t.fds.add(server, cloexec=bool(flags & SOCK_CLOEXEC))
        except OSError:
            server.released = True
            server.close()
            raise
        peer = server.peer
        _put_address(t, addr, len_ptr, peer.name if peer is not None else None)
        return new

    return blocking_call(t, sock, attempt)


def sys_accept4(t: Task, fd: int, addr: int, len_ptr: int, flags: int, *_: int) -> int:
    return _accept(t, fd, addr, len_ptr, flags)


def sys_accept(t: Task, fd: int, addr: int, len_ptr: int, *_: int) -> int:
    return _accept(t, fd, addr, len_ptr, 0)


def sys_getsockname(t: Task, fd: int, addr: int, len_ptr: int, *_: int) -> int:
    sock = _sock(t, fd)
    _put_address(t, addr, len_ptr, sock.name)
    return 0


def sys_getpeername(t: Task, fd: int, addr: int, len_ptr: int, *_: int) -> int:
    sock = _sock(t, fd)
    peer = sock.peer
    if peer is None or (sock.kind != SOCK_DGRAM and not sock.connected):
        return -errno.ENOTCONN
    _put_address(t, addr, len_ptr, peer.name)
    return 0


def sys_shutdown(t: Task, fd: int, how: int, *_: int) -> int:
    _sock(t, fd).shutdown(s32(how))
    return 0


def sys_getsockopt(t: Task, fd: int, level: int, name: int, val: int, len_ptr: int,
                   *_: int) -> int:
    sock = _sock(t, fd)
    if s32(level) != SOL_SOCKET:
        return -errno.ENOPROTOOPT
    name = s32(name)
    if name == SO_PEERCRED:
        data = struct.pack("<iII", t.process.pid, 0, 0)
    else:
        values = {SO_TYPE: sock.kind, SO_ERROR: 0, SO_SNDBUF: 212992, SO_RCVBUF: 212992,
                  SO_ACCEPTCONN: int(sock.listening), SO_DOMAIN: AF_UNIX, SO_PROTOCOL: 0}
        if name not in values:
            return -errno.ENOPROTOOPT
        data = struct.pack("<i", values[name])
    room = s32(t.mem.u32(len_ptr))
    if room < 0:
        return E.INVAL
    t.mem.write(val, data[:room])
    t.mem.put_u32(len_ptr, min(room, len(data)))
    return 0


def sys_setsockopt(t: Task, fd: int, level: int, name: int, val: int, length: int,
                   *_: int) -> int:
    _sock(t, fd)
    return 0                                    # accepted; nothing to tune here


# -- data -----------------------------------------------------------------------------------
def _send(t: Task, fd: int, data: bytes, flags: int, addr: int, alen: int,
          key: tuple[object, ...], retry: tuple[int, int] | None,
          rights: list[OpenFile] | None = None) -> int:
    sock = _sock(t, fd)
    nonblock = bool(flags & MSG_DONTWAIT)
    signal = not flags & MSG_NOSIGNAL
    target = None
    if addr and sock.kind == SOCK_DGRAM:
        target = _lookup(t, _address(t, addr, alen))
    elif addr and sock.kind != SOCK_DGRAM:
        return -errno.EISCONN if sock.connected else -errno.EOPNOTSUPP
    elif not sock.connected and sock.kind != SOCK_DGRAM:
        return -errno.ENOTCONN
    if rights:
        return _send_rights(t, sock, data, target, rights, nonblock)
    if target is not None:
        dest = target
        return blocking_call(t, sock, lambda: sock.send(data, dest), nonblock, [dest.queue])
    return write_stream(t, sock, data, key, retry, nonblock, signal)


def _send_rights(t: Task, sock: UnixSocket, data: bytes, target: UnixSocket | None,
                 rights: list[OpenFile], nonblock: bool) -> int:
    """A send carrying SCM_RIGHTS: one attempt (a stream may take only part of ``data``, the
    descriptions going with its first byte); they hold a reference while in flight, dropped
    again when nothing was queued (an error, a wait that will retry the whole call)."""
    queues = None if target is None else [target.queue]
    hold_files(rights)
    try:
        result = blocking_call(t, sock, lambda: sock.send(data, target, rights), nonblock,
                               queues)
    except BaseException:
        release_files(rights)
        raise
    if result < 0 or result == BLOCK or (result == 0 and sock.kind == SOCK_STREAM):
        release_files(rights)
    return result


def sys_sendto(t: Task, fd: int, buf: int, count: int, flags: int, addr: int,
               alen: int) -> int:
    count = min(count, MAX_IO)
    data = t.mem.read(buf, count)
    return _send(t, fd, data, flags, addr, alen, ("write", s32(fd), buf, count), (1, 2))


def sys_send(t: Task, fd: int, buf: int, count: int, flags: int, *_: int) -> int:
    return sys_sendto(t, fd, buf, count, flags, 0, 0)


def _recv(t: Task, fd: int, n: int, flags: int,
          deliver: Callable[[bytes, int, bytes | None, list[OpenFile]], int]) -> int:
    """Receive into ``deliver``, which installs or drops the passed descriptions (each
    holding a reference the caller must release)."""
    sock = _sock(t, fd)
    peek = bool(flags & MSG_PEEK)

    def attempt() -> int:
        data, full, sender, rights = sock.recv(n, peek)
        try:
            return deliver(data, full, sender, rights)
        finally:
            release_files(rights)

    return blocking_call(t, sock, attempt, bool(flags & MSG_DONTWAIT))


def sys_recvfrom(t: Task, fd: int, buf: int, count: int, flags: int, addr: int,
                 len_ptr: int) -> int:
    n = min(count, MAX_IO)
    check_buffer(t, buf, n)
    if len_ptr:
        t.mem.u32(len_ptr)

    def deliver(data: bytes, full: int, sender: bytes | None, _rights: list[OpenFile]) -> int:
        t.mem.write(buf, data)                  # passed descriptors are dropped, as on Linux
        _put_address(t, addr, len_ptr, sender)
        return full if flags & MSG_TRUNC else len(data)

    return _recv(t, fd, n, flags, deliver)


def sys_recv(t: Task, fd: int, buf: int, count: int, flags: int, *_: int) -> int:
    return sys_recvfrom(t, fd, buf, count, flags, 0, 0)


def _msghdr(t: Task, ptr: int) -> tuple[int, int, int, int, int, int, int]:
    """(name, namelen, iov, iovlen, control, controllen, flags) of a struct msghdr."""
    if t.is64:
        fields = struct.unpack("<QI4xQQQQi4x", t.mem.read(ptr, 56))
    else:
        fields = struct.unpack("<IIIIIIi", t.mem.read(ptr, 28))
    name, namelen, iov, iovlen, control, controllen, mflags = (int(v) for v in fields)
    return name, namelen, iov, iovlen, control, controllen, mflags


def _cmsg_header(t: Task) -> tuple[int, int]:
    """(size of struct cmsghdr, alignment of control data) for the caller's ABI."""
    return (16, 8) if t.is64 else (12, 4)


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _rights_from(t: Task, control: int, length: int) -> list[OpenFile]:
    """The descriptions named by a sendmsg's SCM_RIGHTS messages (EBADF for a bad one,
    EINVAL for a malformed control buffer or more than MAX_RIGHTS)."""
    head, align = _cmsg_header(t)
    length = min(length, 1 << 16)
    raw = t.mem.read(control, length) if control and length else b""
    files: list[OpenFile] = []
    pos = 0
    while pos + head <= len(raw):
        clen = int.from_bytes(raw[pos:pos + head - 8], "little")
        level, kind = struct.unpack_from("<ii", raw, pos + head - 8)
        if clen < head or pos + clen > len(raw):
            raise OSError(errno.EINVAL, "malformed control message")
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            count = (clen - head) // 4
            if len(files) + count > MAX_RIGHTS:
                raise OSError(errno.EINVAL, "too many descriptors in one message")
            for (fd,) in struct.iter_unpack("<i", raw[pos + head:pos + head + 4 * count]):
                files.append(t.fds.get(fd))
        elif not (level == SOL_SOCKET and kind == SCM_CREDENTIALS):
            raise OSError(errno.EINVAL, "unsupported control message")
        pos += _align(clen, align)
    return files


def sys_sendmsg(t: Task, fd: int, msg: int, flags: int, *_: int) -> int:
    name, namelen, iov, iovlen, control, clen, _mflags = _msghdr(t, msg)
    rights = _rights_from(t, control, clen)
    parts = []
    room = MAX_IO
    for base, length in t.abi.iovecs(t.mem, iov, iovlen):
        parts.append(t.mem.read(base, min(length, room)))
        room -= len(parts[-1])
    data = b"".join(parts)
    return _send(t, fd, data, flags, name, namelen if name else 0, ("sendmsg", fd, msg), None,
                 rights)


def _install_rights(t: Task, control: int, clen: int, rights: list[OpenFile],
                    cloexec: bool) -> tuple[int, int]:
    """Give the caller descriptors for ``rights`` in one SCM_RIGHTS message, as many as the
    control buffer holds (and the fd table takes). (control bytes used, MSG_CTRUNC or 0)."""
    if not rights:
        return 0, 0
    head, align = _cmsg_header(t)
    room = (clen - head) // 4 if control and clen > head else 0
    fds: list[int] = []
    for file in rights[:max(room, 0)]:
        try:
            fds.append(t.fds.add(file, cloexec=cloexec))
        except OSError:                          # EMFILE: the rest are dropped
            break
    truncated = MSG_CTRUNC if len(fds) < len(rights) else 0
    if not fds:
        return 0, truncated
    size = head + 4 * len(fds)
    t.mem.write(control, size.to_bytes(head - 8, "little")
                + struct.pack("<ii", SOL_SOCKET, SCM_RIGHTS)
                + struct.pack(f"<{len(fds)}i", *fds))
    return min(_align(size, align), clen), truncated


def sys_recvmsg(t: Task, fd: int, msg: int, flags: int, *_: int) -> int:
    name, namelen, iov, iovlen, control, clen, _mflags = _msghdr(t, msg)
    vecs = t.abi.iovecs(t.mem, iov, iovlen)
    for base, length in vecs:
        check_buffer(t, base, length)
    if control and clen > 0:
        check_buffer(t, control, min(clen, 1 << 16))
    total = min(sum(length for _, length in vecs), MAX_IO)

    def deliver(data: bytes, full: int, sender: bytes | None, rights: list[OpenFile]) -> int:
        pos = 0
        for base, length in vecs:
            piece = data[pos:pos + length]
            t.mem.write(base, piece)
            pos += len(piece)
        out_flags = MSG_TRUNC if full > len(data) and _sock(t, fd).kind != SOCK_STREAM else 0
        used, truncated = _install_rights(t, control, clen, rights,
                                          bool(flags & MSG_CMSG_CLOEXEC))
        out_flags |= truncated
        if name:
            encoded = _encode(sender)
            t.mem.write(name, encoded[:max(namelen, 0)])
            sender_len = len(encoded)
        else:
            sender_len = 0
        if t.is64:
            t.mem.put_u32(msg + 8, sender_len)
            t.mem.write(msg + 40, struct.pack("<Q", used))
            t.mem.put_u32(msg + 48, out_flags)
        else:
            t.mem.put_u32(msg + 4, sender_len)
            t.mem.put_u32(msg + 20, used)
            t.mem.put_u32(msg + 24, out_flags)
        return full if flags & MSG_TRUNC else len(data)

    return _recv(t, fd, total, flags, deliver)


# -- i386 socketcall ---------------------------------------------------------------------------
_SOCKETCALL: dict[int, tuple[Handler, int]] = {
    1: (sys_socket, 3), 2: (sys_bind, 3), 3: (sys_connect, 3), 4: (sys_listen, 2),
    5: (sys_accept, 3), 6: (sys_getsockname, 3), 7: (sys_getpeername, 3),
    8: (sys_socketpair, 4), 9: (sys_send, 4), 10: (sys_recv, 4), 11: (sys_sendto, 6),
    12: (sys_recvfrom, 6), 13: (sys_shutdown, 2), 14: (sys_setsockopt, 5),
    15: (sys_getsockopt, 5), 16: (sys_sendmsg, 3), 17: (sys_recvmsg, 3), 18: (sys_accept4, 4)}


def sys_socketcall(t: Task, call: int, args: int, *_: int) -> int:
    """i386 socketcall: the call number and a pointer to its arguments. A send split
    around a wait returns its partial count here (its arguments are not in registers)."""
    found = _SOCKETCALL.get(call)
    if found is None:
        return E.INVAL
    handler, count = found
    values = list(t.abi.read_words(t.mem, args, count)) + [0] * (6 - count)
    if handler is sys_send or handler is sys_sendto:
        fd, buf, n, flags = values[:4]
        n = min(n, MAX_IO)
        data = t.mem.read(buf, n)
        return _send(t, fd, data, flags, values[4], values[5], ("socketcall", args), None)
    return int(handler(t, *values))


__all__ = ["sys_socket", "sys_socketpair", "sys_bind", "sys_listen", "sys_connect",
           "sys_accept", "sys_accept4", "sys_getsockname", "sys_getpeername", "sys_shutdown",
           "sys_getsockopt", "sys_setsockopt", "sys_sendto", "sys_send", "sys_recvfrom",
           "sys_recv", "sys_sendmsg", "sys_recvmsg", "sys_socketcall"]
