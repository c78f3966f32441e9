"""System information and limits: uname, getrandom, sched_*, rlimits, prctl, umask,
sysinfo."""

from __future__ import annotations

import os
import struct
import time
import weakref
from typing import TYPE_CHECKING

from .. import accounting
from ..memory import GuestFault
from ..procfs import OSRELEASE, exec_comm, resident_bytes, thread_comm
from .common import E, s32

if TYPE_CHECKING:
    from ..process import Process
    from ..task import Task

__all__ = ["exec_comm", "exec_personality"]


# -- identity, limits, signals ----------------------------------------------------------
def sys_uname(t: Task, buf: int, *_: int) -> int:
    fields = [b"Linux", t.kernel.spec.name.encode()[:64], OSRELEASE.encode(),
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
    """PR_SET_NAME names the calling thread (16 bytes with the NUL, as Linux cuts it; the
    main thread's name is the process's /proc comm); PR_GET_NAME reads it back."""
    proc = t.process
    tid = int(t.thread.tid)
    if option == 15:                            # PR_SET_NAME
        name = _guest_name(t, arg)
        if name is None:
            return E.FAULT
        if tid == proc.pid:
            proc.comm = name
        else:
            if len(proc.thread_comm) >= 1024 and tid not in proc.thread_comm:
                proc.thread_comm.pop(next(iter(proc.thread_comm)))
            proc.thread_comm[tid] = name
        return 0
    if option == 16:                            # PR_GET_NAME
        name = thread_comm(proc, tid)
        t.mem.write(arg, name.encode("utf-8", "surrogateescape")[:15].ljust(16, b"\0"))
        return 0
    return E.INVAL


def _guest_name(t: Task, ptr: int) -> str | None:
    """Up to 15 bytes of the NUL-terminated name at ``ptr`` (None: a bad pointer)."""
    data = b""
    for i in range(16):
        try:
            byte = t.mem.read(ptr + i, 1)
        except GuestFault:
            return None if i == 0 else data[:15].decode("utf-8", "surrogateescape")
        if byte == b"\0":
            break
        data += byte
    return data[:15].decode("utf-8", "surrogateescape")


def sys_umask(t: Task, mask: int, *_: int) -> int:
    old = t.process.umask
    t.process.umask = mask & 0o777
    return old


def sys_sysinfo(t: Task, ptr: int, *_: int) -> int:
    """struct sysinfo of the partition: its memory, what its processes touched (procfs.py),
    its uptime, its runnable threads as the load and its process count."""
    total, used = t.kernel.fs.procfs._memory() if t.kernel.fs.procfs.kernel is not None \
        else (t.kernel.spec.memory_bytes, 0)
    total = total or t.kernel.spec.memory_bytes
    uptime = int(time.monotonic() - t.kernel.started)
    load = min(t.kernel.fs.procfs._runnable(), 1 << 10) << 16
    procs = min(len(t.kernel.processes) or 1, 0xFFFF)
    word = t.abi.word
    w = "Q" if word == 8 else "I"
    cap = (1 << (8 * word)) - 1
    head = struct.pack(f"<{w}3{w}6{w}H", min(uptime, cap), load, load, load, min(total, cap),
                       min(total - used, cap), 0, 0, 0, 0, procs)
    head += bytes(-len(head) % word)           # the padding before totalhigh
    data = head + struct.pack(f"<{w}{w}I", 0, 0, 1)
    data += bytes((64 if word == 4 else 112) - len(data))
    t.mem.write(ptr, data)
    return 0


# -- accounting ----------------------------------------------------------------------------
RUSAGE_SELF, RUSAGE_CHILDREN, RUSAGE_THREAD = 0, -1, 1


def sys_getrusage(t: Task, who: int, ptr: int, *_: int) -> int:
    """ru_utime/ru_stime: the CPU time of the calling process's threads (RUSAGE_SELF), of
    the calling thread (RUSAGE_THREAD), or of the reaped children and their reaped
    descendants (RUSAGE_CHILDREN), as accounting.py measures it. ru_maxrss (KiB): the
    process's peak resident size (its touched guest pages), or the largest child's."""
    who = s32(who)
    process = t.process
    if who == RUSAGE_CHILDREN:
        user, system, rss = process.cutime, process.cstime, process.cmaxrss
    elif who in (RUSAGE_SELF, RUSAGE_THREAD):
        if who == RUSAGE_SELF:
            user, system = accounting.process_times(t.kernel, process)
        else:
            user, system = accounting.thread_times(t.kernel, t.thread)
        rss = accounting.note_rss(process, resident_bytes(t.mem) // 1024)
    else:
        return E.INVAL
    t.mem.write(ptr, accounting.rusage(t.is64, user, system, rss))
    return 0


def sys_times(t: Task, ptr: int, *_: int) -> int:
    """struct tms in clock ticks (100 Hz): the calling process's user and system time and
    its reaped children's (accounting.py); returns ticks since the partition started."""
    if ptr:
        process = t.process
        user, system = accounting.process_times(t.kernel, process)
        for i, seconds in enumerate((user, system, process.cutime, process.cstime)):
            t.abi.write_word(t.mem, ptr + i * t.abi.word, int(seconds * accounting.HZ))
    return int((time.monotonic() - t.kernel.started) * 100) & ((1 << (8 * t.abi.word - 1)) - 1)


READ_IMPLIES_EXEC = 0x0400000


def sys_personality(t: Task, persona: int, *_: int) -> int:
    """Set the calling process's persona unless it is 0xffffffff (a query); return the
    previous one. Kept per process, inherited by fork; the flags change nothing here."""
    persona &= 0xFFFFFFFF
    old = t.process.personality
    if persona != 0xFFFFFFFF:
        t.process.personality = persona
    return old


def exec_personality(persona: int, arch: str) -> int:
    """The persona after execve: an x86_64 program loses READ_IMPLIES_EXEC (Linux's
    set_personality_64bit); the rest is kept."""
    return persona & ~READ_IMPLIES_EXEC if arch == "x86_64" else persona


_IOPRIO: weakref.WeakKeyDictionary[Process, int] = weakref.WeakKeyDictionary()
_NICE: weakref.WeakKeyDictionary[Process, int] = weakref.WeakKeyDictionary()
IOPRIO_DEFAULT = (2 << 13) | 4                  # best effort, level 4


def _target(t: Task, which: int, who: int, kinds: tuple[int, ...]) -> Process | int:
    """The process ``who`` names (0: the caller) when ``which`` is kinds[0] (a process);
    for a process group or a user (everything runs as uid 0) the caller stands for them."""
    if which not in kinds:
        return E.INVAL
    who = s32(who)
    if who == 0 or which != kinds[0]:
        return t.process
    found = t.kernel.processes.get(who)
    return E.SRCH if found is None else found


def sys_ioprio_get(t: Task, which: int, who: int, *_: int) -> int:
    proc = _target(t, s32(which), who, (1, 2, 3))
    return proc if isinstance(proc, int) else _IOPRIO.get(proc, IOPRIO_DEFAULT)


def sys_ioprio_set(t: Task, which: int, who: int, prio: int, *_: int) -> int:
    proc = _target(t, s32(which), who, (1, 2, 3))
    if isinstance(proc, int):
        return proc
    prio &= 0xFFFF
    if prio >> 13 > 3 or (prio >> 13 in (1, 2) and prio & 0x1FFF > 7):
        return E.INVAL
    _IOPRIO[proc] = prio if prio else IOPRIO_DEFAULT
    return 0


def sys_getpriority(t: Task, which: int, who: int, *_: int) -> int:
    proc = _target(t, s32(which), who, (0, 1, 2))
    return proc if isinstance(proc, int) else 20 - _NICE.get(proc, 0)


def sys_setpriority(t: Task, which: int, who: int, prio: int, *_: int) -> int:
    proc = _target(t, s32(which), who, (0, 1, 2))
    if isinstance(proc, int):
        return proc
    _NICE[proc] = max(-20, min(19, s32(prio)))
    return 0


def sys_getresuid(t: Task, ruid: int, euid: int, suid: int, *_: int) -> int:
    """getresuid/getresgid (32-bit ids): everything runs as 0."""
    for ptr in (ruid, euid, suid):
        t.mem.put_u32(ptr, 0)
    return 0


def sys_getresuid16(t: Task, ruid: int, euid: int, suid: int, *_: int) -> int:
    for ptr in (ruid, euid, suid):
        t.mem.write(ptr, b"\0\0")
    return 0
