"""Collecting a paused Machine's complete state into a state file, and applying one.

The format is state.py's. What is in it and how it is found:

- Memory: every guest page that is present (or swapped out) in the host mapping, found
  through ``/proc/self/pagemap`` (8 bytes per page, read only over the guest mapping: ~85 ms
  for 16 GiB), minus all-zero pages. That sees every page the guest or the loader ever
  wrote, wherever it is (no trust in the allocator's bookkeeping), never faults untouched
  pages in, and costs nothing for the untouched part of a 64 GiB partition. ``mincore()``
  was rejected: it reports swapped-out pages as absent.
- Threads: each one's Unicorn context as raw bytes (see state.py), its pending register
  writes, what it is blocked on (futex address/bitset, remaining timeout, stdin read), its
  clear_child_tid and i386 GDT; the run queue order.
- The syscall layer: snapfiles.py (fds by guest path + offset, pipes, the upper layer).
Console output is written straight through to the console ring (no buffer to flush).
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

from . import unicorn_build
from .abi import ABI_I386, ABI_X86_64
from .fs import Sandbox
from .memory import PAGE, GuestMemory, _libc
from .process import Process
from .signals import ERESTARTSYS, refresh
from .snapfiles import read_upper, restore_files, save_files, write_upper
from .state import StateError, StateReader, StateWriter, write_all
from .syscalls import tables
from .threads import BLOCKED, PID_MAX, RUNNABLE, GuestThread
from .vcpu import Vcpu
from .waitq import restart_all

if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["save_machine", "restore_machine", "touched_runs", "context_bytes"]

_ZERO = ctypes.create_string_buffer(PAGE)
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.memcmp.restype = ctypes.c_int


# -- memory ---------------------------------------------------------------------------
def touched_runs(mem: GuestMemory) -> list[tuple[int, int]]:
    """(offset into the mapping, length) of every non-zero page run the guest holds."""
    runs: list[tuple[int, int]] = []
    for pos, length in mem.touched_runs():
        run_start = -1
        for page in range(pos // PAGE, (pos + length) // PAGE):
            zero = _libc.memcmp(mem.host + page * PAGE, _ZERO, PAGE) == 0
            if not zero and run_start < 0:
                run_start = page
            elif zero and run_start >= 0:
                runs.append((run_start * PAGE, (page - run_start) * PAGE))
                run_start = -1
        if run_start >= 0:
            runs.append((run_start * PAGE, pos + length - run_start * PAGE))
    return runs


def _write_memory(mem: GuestMemory, fd: int) -> int:
    runs = touched_runs(mem)
    table = [len(runs).to_bytes(8, "little")]
    for off, length in runs:
        table.append((mem.base + off).to_bytes(8, "little") + length.to_bytes(8, "little"))
    write_all(fd, b"".join(table))
    for off, length in runs:
        write_all(fd, mem.view[off:off + length])
    return sum(length for _, length in runs)


def _read_memory(mem: GuestMemory, reader: StateReader) -> None:
    src, length = reader.open_section(b"MEMR")
    count = int.from_bytes(src.read(8), "little")
    table = src.read(16 * count)
    if len(table) != 16 * count:
        raise StateError("memory section is truncated")
    for i in range(count):
        addr = int.from_bytes(table[16 * i:16 * i + 8], "little")
        size = int.from_bytes(table[16 * i + 8:16 * i + 16], "little")
        off = addr - mem.base
        if off < 0 or off + size > mem.size:
            raise StateError(f"memory run 0x{addr:x}+{size} is outside guest memory")
        view = mem.view[off:off + size]
        while view:
            n = src.readinto(view)  # type: ignore[attr-defined]
            if not n:
                raise StateError("memory section is truncated")
            view = view[n:]


# -- CPU contexts -------------------------------------------------------------------------
def _context_data(ctx: Any) -> tuple[int, int]:
    """(address, size) of the CPU state bytes inside a UcContext."""
    ptr = int(ctx.context.value)
    size = ctypes.c_size_t.from_address(ptr).value
    return ptr + int(ctx.size) - size, size


def context_bytes(ctx: Any) -> bytes:
    addr, size = _context_data(ctx)
    return ctypes.string_at(addr, size)


def _context_from(vcpu: Vcpu, data: bytes) -> Any:
    ctx = vcpu.uc.context_save()
    addr, size = _context_data(ctx)
    if size != len(data):
        raise StateError(f"CPU context is {len(data)} bytes, this unicorn uses {size}")
    ctypes.memmove(addr, data, size)
    return ctx


# -- save -------------------------------------------------------------------------------
def _thread_record(machine: Machine, thread: GuestThread, now: float) -> dict[str, Any]:
    sched = machine.sched
    timer = sched.live_timer(thread)
    return {
        "tid": thread.tid, "state": thread.state, "fresh": thread.fresh,
        "clear_tid": thread.clear_tid, "gdt": thread.gdt,
        "pending": [[k, v] for k, v in thread.pending.items()],
        "context": thread.context is not None,
        "futex": None if thread.futex_addr is None else [thread.futex_addr, thread.futex_bitset],
        "timer": None if timer is None else [max(timer[0] - now, 0.0), timer[1]],
        "stdin": list(thread.stdin_wait) if thread.stdin_wait and thread.state == BLOCKED
        else None,
        "sig": thread.sig.save(), "intr": thread.intr_result,
    }


def save_machine(machine: Machine, path: Path) -> dict[str, float]:
    """Write the paused machine's state to ``path`` atomically; returns timings/sizes."""
    mem = machine.mem
    sched = machine.sched
    init = machine.init
    assert mem is not None and init is not None
    if len(machine.processes) > 1:
        raise RuntimeError("saving a partition that runs more than one process is not "
                           "supported yet (one process per saved state)")
    t0 = time.monotonic()
    with sched.cond:
        restart_all(sched)    # I/O waits become retries (waitq.py): nothing of them to save
        now = sched.paused_at
        threads = sorted(sched.threads.values(), key=lambda t: t.tid)
        meta: dict[str, Any] = {
            "arch": machine.arch, "vcpus": machine.spec.vcpus,
            "unicorn": unicorn_build.build_info().get("lib_sha256"),
            "memory": {"base": mem.base, "image_end": mem.image_end, "uid": mem.uid,
                       "memory_bytes": machine.spec.memory_bytes, "size": mem.size,
                       "brk_start": mem.brk_start, "brk": mem.brk, "starts": mem._starts,
                       "ends": mem._ends, "exec_generation": mem.exec_generation,
                       "exec_ranges": mem.exec_ranges, "image_perms": mem.image_perms},
            "machine": {"cwd": init.cwd, "umask": init.umask,
                        "uptime": now - machine.started, "gdt_free": init.gdt_free,
                        "mono_ns": int(now * 1e9) + machine.mono_offset_ns,
                        "unknown": [[k, v] for k, v in machine.unknown.items()],
                        "signals": init.signals.save(now)},
            "sched": {"threads": [_thread_record(machine, t, now) for t in threads],
                      "runq": [t.tid for t in sched.runq],
                      "futexes": [[a, [t.tid for t in w]] for a, w in sched.futexes.items()],
                      "next_tid": sched._next_id},
            "files": save_files(init.fds),
        }
        contexts = [context_bytes(t.context) for t in threads if t.context is not None]
    writer = StateWriter(path)
    try:
        writer.section(b"META", json.dumps(meta).encode())
        writer.section(b"CTXT", b"".join(contexts))
        with writer.stream(b"MEMR") as fd:
            touched = _write_memory(mem, fd)
        machine.fs.meta.compact()         # the guest's modes/owners travel in the layer
        with writer.stream(b"UPPR") as fd, os.fdopen(os.dup(fd), "wb") as out:
            write_upper(machine.fs.upper, out)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"seconds": time.monotonic() - t0, "touched": touched,
            "bytes": path.stat().st_size}


# -- restore --------------------------------------------------------------------------------
def restore_machine(machine: Machine, path: Path) -> None:
    """Boot ``machine`` from the state file instead of the image (Machine.run calls this)."""
    reader = StateReader(path)
    try:
        meta = json.loads(reader.read(b"META"))
        _restore(machine, meta, reader)
    finally:
        reader.close()


def _restore(machine: Machine, meta: dict[str, Any], reader: StateReader) -> None:
    spec = machine.spec
    upper = spec.upper
    if upper is None:
        machine._tmp_upper = tempfile.mkdtemp(prefix=f"viridian-{spec.name}-")
        upper = Path(machine._tmp_upper)
    machine.fs = Sandbox(spec.root, upper, spec.entrypoint)
    src, length = reader.open_section(b"UPPR")
    read_upper(src, length, machine.fs.upper)
    machine.arch = arch = str(meta["arch"])
    machine.abi = ABI_X86_64 if arch == "x86_64" else ABI_I386
    machine.syscalls = tables(arch)
    lay = meta["memory"]
    mem = GuestMemory(lay["base"], lay["image_end"], lay["memory_bytes"],
                      64 if arch == "x86_64" else 32)
    machine.mem = mem
    if mem.size != lay["size"]:
        raise StateError("guest memory layout differs from the saved one")
    _read_memory(mem, reader)
    mem.brk_start, mem.brk = lay["brk_start"], lay["brk"]
    mem._starts, mem._ends = list(lay["starts"]), list(lay["ends"])
    mem.exec_generation = lay["exec_generation"]
    mem.uid = int(lay.get("uid", 0))
    mem.exec_ranges = [(lo, hi) for lo, hi in lay["exec_ranges"]]
    mem.image_perms = [(a, b, p) for a, b, p in lay["image_perms"]]
    m = meta["machine"]
    machine.init = init = Process(pid=1, mem=mem, cwd=str(m["cwd"]), umask=int(m["umask"]),
                                  exe=spec.entrypoint, argv=[spec.entrypoint, *spec.args])
    machine.processes = {1: init}
    machine.started = time.monotonic() - float(m["uptime"])
    machine.mono_offset_ns = int(m.get("mono_ns", time.monotonic_ns())) - time.monotonic_ns()
    init.gdt_free = [int(slot) for slot in m["gdt_free"]]
    machine.unknown = {int(k): int(v) for k, v in m["unknown"]}
    init.fds = restore_files(machine, meta["files"])
    init.signals.restore(m.get("signals", {}), init, machine)   # armed timers count on
    machine.vcpus = [Vcpu(machine, i) for i in range(spec.vcpus)]
    _restore_threads(machine, meta["sched"], reader.read(b"CTXT"))


def _restore_threads(machine: Machine, data: dict[str, Any], contexts: bytes) -> None:
    sched = machine.sched
    init = machine.init
    assert init is not None
    sched.result_reg = X.UC_X86_REG_RAX if machine.arch == "x86_64" else X.UC_X86_REG_EAX
    vcpu = machine.vcpus[0]
    size = _context_data(vcpu.uc.context_save())[1]
    by_tid: dict[int, GuestThread] = {}
    stdin_waits: list[tuple[GuestThread, int, int]] = []
    now = time.monotonic()
    pos = 0
    with sched.cond:
        for rec in data["threads"]:
            thread = GuestThread(tid=int(rec["tid"]), process=init, clear_tid=rec["clear_tid"],
                                 gdt=rec["gdt"], fresh=rec["fresh"])
            thread.pending = {int(k): int(v) for k, v in rec["pending"]}
            thread.sig.restore(rec.get("sig", {}))
            if rec["context"]:
                thread.context = _context_from(vcpu, contexts[pos:pos + size])
                pos += size
            thread.state = RUNNABLE if rec["state"] != BLOCKED else BLOCKED
            if rec["futex"] is not None:
                thread.futex_addr, thread.futex_bitset = rec["futex"]
            if thread.state == BLOCKED and rec["timer"] is not None:
                remaining, result = rec["timer"]
                sched.block(thread, now + remaining, int(result))
            intr = rec.get("intr", ERESTARTSYS)
            thread.intr_result = None if intr is None else int(intr)
            if thread.state == BLOCKED and rec["stdin"] is not None:
                stdin_waits.append((thread, *rec["stdin"]))
            by_tid[thread.tid] = thread
            sched.threads[thread.tid] = thread
        for thread in by_tid.values():
            refresh(thread)
        for tid in data["runq"]:
            sched.runq.append(by_tid[tid])
        for addr, tids in data["futexes"]:
            sched.futexes[int(addr)] = [by_tid[t] for t in tids]
        sched._next_id = min(max(int(data["next_tid"]), 2), PID_MAX - 1)
    for thread, buf, count in stdin_waits:
        machine.read_stdin(thread, buf, count)
