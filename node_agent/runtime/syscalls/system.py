"""System information and limits: uname, getrandom, sched_*, rlimits, prctl, umask,
sysinfo."""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING

from .common import E

if TYPE_CHECKING:
    from ..task import Task




# -- identity, limits, signals ----------------------------------------------------------
def sys_uname(t: Task, buf: int, *_: int) -> int:
    fields = [b"Linux", t.kernel.spec.name.encode()[:64], b"6.1.0-viridian",
              b"#1 SMP PREEMPT_DYNAMIC", t.abi.name.encode(), b"(none)"]
    t.mem.write(buf, b"".join(f.ljust(65, b"\0") for f in fields))
    return 0


def sys_getrandom(t: Task, buf: int, length: int, *_: int) -> int:
    length = min(length, 1 << 20)
    t.mem.write(buf, os.urandom(length))
    return length


def sys_sched_yield(t: Task, *_: int) -> int:
    if t.kernel.sched.has_waiting():
        t.yield_cpu()
    return 0


def sys_sched_getaffinity(t: Task, pid: int, size: int, ptr: int, *_: int) -> int:
    word = t.abi.word
    if size < word:
        return E.INVAL
    t.mem.write(ptr, ((1 << t.kernel.spec.vcpus) - 1).to_bytes(word, "little"))
    return word


def _limit(t: Task, resource: int) -> tuple[int, int]:
    inf = (1 << 64) - 1
    table = {3: (8 << 20, inf), 7: (1024, 1024), 9: (t.kernel.spec.memory_bytes,) * 2,
             2: (t.kernel.spec.memory_bytes,) * 2, 4: (0, inf)}
    return table.get(resource, (inf, inf))


def sys_prlimit64(t: Task, pid: int, resource: int, new: int, old: int, *_: int) -> int:
    if old:
        t.mem.write(old, struct.pack("<QQ", *_limit(t, resource)))
    return 0


def sys_getrlimit(t: Task, resource: int, ptr: int, *_: int) -> int:
    word = t.abi.word
    cur, mx = _limit(t, resource)
    cap = (1 << (8 * word)) - 1
    t.mem.write(ptr, struct.pack(f"<2{'Q' if word == 8 else 'I'}", min(cur, cap), min(mx, cap)))
    return 0


def sys_prctl(t: Task, option: int, arg: int, *_: int) -> int:
    if option == 15:                            # PR_SET_NAME
        return 0
    if option == 16:                            # PR_GET_NAME
        t.mem.write(arg, t.kernel.spec.name.encode()[:15].ljust(16, b"\0"))
        return 0
    return E.INVAL


def sys_umask(t: Task, mask: int, *_: int) -> int:
    old = t.process.umask
    t.process.umask = mask & 0o777
    return old


def sys_sysinfo(t: Task, ptr: int, *_: int) -> int:
    mem = t.kernel.spec.memory_bytes
    word = "Q" if t.abi.word == 8 else "I"
    uptime = int(time.monotonic() - t.kernel.started)
    cap = (1 << (8 * t.abi.word)) - 1
    data = struct.pack(f"<{word}3{word}6{word}H", uptime, 0, 0, 0, min(mem, cap),
                       min(mem // 2, cap), 0, 0, 0, 0, 1)
    t.mem.write(ptr, data + struct.pack(f"<{word}{word}I", 0, 0, 1))
    return 0
