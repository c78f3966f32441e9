"""A user-space stand-in for tc netem's delay, for kernels built without sch_netem.

Run inside a service's network namespace (faults.py starts it with `ip netns exec`). It
binds NFQUEUE queue `--queue` over a netlink socket (nfnetlink_queue, no library needed)
and gives each queued packet its ACCEPT verdict `--delay-ms` ± `--jitter-ms` after it
arrived; verdicts may go out of order, so jitter reorders packets as netem's does. An
iptables rule `-j NFQUEUE --queue-num N --queue-bypass` sends the packets here; with
--queue-bypass, packets pass undelayed whenever no delayer is bound (never a black hole).

It writes `--pid-file` ("PID STARTTIME") once bound: that is its readiness. SIGTERM or
SIGINT releases every packet still held at once, then it exits.

This file is standalone (the standard library only): it runs as a script.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33
NETLINK_NO_ENOBUFS = 5
SOL_NETLINK = 270
NFNL_SUBSYS_QUEUE = 3
MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | 0
MSG_VERDICT = (NFNL_SUBSYS_QUEUE << 8) | 1
MSG_CONFIG = (NFNL_SUBSYS_QUEUE << 8) | 2
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND = 1
COPY_META = 1  # the packet id and metadata, not the payload
F_FAIL_OPEN = 1  # a full queue accepts packets instead of dropping them
ATTR_PACKET_HDR, ATTR_VERDICT_HDR = 1, 2
NF_ACCEPT = 1


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _msg(kind: int, flags: int, queue: int, attrs: bytes) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, flags, 0, 0) + body


def _configure(sock: socket.socket, queue: int, attrs: bytes) -> None:
    sock.send(_msg(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue, attrs))
    reply = sock.recv(4096)
    _, kind, _, _, _ = struct.unpack_from("=IHHII", reply)
    if kind == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", reply, 16)
        if err:
            raise OSError(-err, f"nfqueue config: {os.strerror(-err)}")


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of the queued-packet messages in one netlink datagram."""
    ids: list[int] = []
    off = 0
    while off + 16 <= len(data):
        length, kind, _, _, _ = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if kind == MSG_PACKET:
            a = off + 20  # nlmsghdr (16) + nfgenmsg (4)
            while a + 4 <= off + length:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if akind & 0x7FFF == ATTR_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return ids


def _starttime() -> int:
    stat = open("/proc/self/stat").read()  # noqa: SIM115 - one read
    return int(stat.rsplit(")", 1)[1].split()[19])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--pid-file", required=True)
    args = ap.parse_args(argv)

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))
    _configure(sock, args.queue, _attr(CFG_CMD, struct.pack("!BBH", CMD_BIND, 0, 0)))
    _configure(sock, args.queue,
               _attr(CFG_PARAMS, struct.pack("!IB", 0, COPY_META))
               + _attr(CFG_QUEUE_MAXLEN, struct.pack("!I", 16384))
               + _attr(CFG_MASK, struct.pack("!I", F_FAIL_OPEN))
               + _attr(CFG_FLAGS, struct.pack("!I", F_FAIL_OPEN)))
    tmp = args.pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {_starttime()}\n")
    os.replace(tmp, args.pid_file)

    rng = random.Random()
    delay, jitter = args.delay_ms / 1000.0, args.jitter_ms / 1000.0
    held: list[tuple[float, int]] = []  # (release time, packet id), a heap

    def release(packet_id: int) -> None:
        verdict = _attr(ATTR_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
        sock.send(_msg(MSG_VERDICT, NLM_F_REQUEST, args.queue, verdict))

    while not stopping:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
        try:
            readable, _, _ = select.select([sock], [], [], timeout)
            if readable:
                data = sock.recv(1 << 16)
                now = time.monotonic()
                for packet_id in packet_ids(data):
                    hold = max(0.0, delay + rng.uniform(-jitter, jitter))
                    heapq.heappush(held, (now + hold, packet_id))
        except InterruptedError:
            continue
        now = time.monotonic()
        while held and held[0][0] <= now:
            release(heapq.heappop(held)[1])
    for _, packet_id in held:
        release(packet_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
