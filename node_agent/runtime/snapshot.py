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

from . import unicorn_build
from .files import FdTable
from .fs import Sandbox
from .memory import GuestMemory
from .process import Process
from .proctable import restore_processes, restore_vfork_waits, save_processes
from .signals import ERESTARTSYS, refresh
from .snapfiles import read_upper, restore_fd_tables, restore_files, save_fd_tables, write_upper
from .state import StateError, StateReader, StateWriter
from .threads import BLOCKED, PID_MAX, RUNNABLE, GuestThread
from .vcpu import Vcpu
from .waitq import restart_all, restore_deadline, saved_deadline

if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["save_machine", "restore_machine", "context_bytes"]



# -- memory (version 2 files) ---------------------------------------------------------
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
        "tid": thread.tid, "pid": thread.process.pid, "state": thread.state,
        "fresh": thread.fresh, "restart": None if thread.restart is None
        else [[k, v] for k, v in thread.restart.items()],
        "clear_tid": thread.clear_tid, "gdt": thread.gdt,
        "pending": [[k, v] for k, v in thread.pending.items()],
        "context": thread.context is not None,
        "futex": None if thread.futex_addr is None else [thread.futex_addr, thread.futex_bitset],
        "timer": None if timer is None else [max(timer[0] - now, 0.0), timer[1]],
        "stdin": list(thread.stdin_wait) if thread.stdin_wait and thread.state == BLOCKED
        else None,
        "sig": thread.sig.save(), "intr": thread.intr_result,
        "deadline": saved_deadline(thread, now),
    }


def save_machine(machine: Machine, path: Path) -> dict[str, float]:
    """Write the paused machine's state to ``path`` atomically; returns timings/sizes.

    Sections: META (JSON: the machine, every address space's layout, the process tree, the
    fd tables, the threads), CTXT (CPU contexts), one G### per memfd shared by address
    spaces (what they share copy-on-write, saved once), one M### per address space (what
    it holds beyond that), UPPR (the writable layer)."""
    sched = machine.sched
    t0 = time.monotonic()
    with sched.cond:
        restart_all(sched)    # I/O waits become retries (waitq.py): nothing of them to save
        now = sched.paused_at
        live = [p for p in sorted(machine.processes.values(), key=lambda p: p.pid)
                if p.exit_status is None]
        spaces: list[GuestMemory] = []
        tables: list[FdTable] = []
        space_of: dict[int, int] = {}
        fds_of: dict[int, int] = {}
        for proc in live:
            if id(proc.mem) not in space_of:
                space_of[id(proc.mem)] = len(spaces)
                spaces.append(proc.mem)
            if id(proc.fds) not in fds_of:
                fds_of[id(proc.fds)] = len(tables)
                tables.append(proc.fds)
        groups: dict[tuple[int, int], int] = {}
        group_of: list[int] = []
        for mem in spaces:
            group_of.append(groups.setdefault(mem.shared_key(), len(groups)))
        procs = save_processes(machine.procs, now, space_of, fds_of)
        threads = sorted(sched.threads.values(), key=lambda t: t.tid)
        meta: dict[str, Any] = {
            "arch": machine.arch, "vcpus": machine.spec.vcpus,
            "unicorn": unicorn_build.build_info().get("lib_sha256"),
            "machine": {"uptime": now - machine.started,
                        "mono_ns": int(now * 1e9) + machine.mono_offset_ns,
                        "unknown": [[k, v] for k, v in machine.unknown.items()]},
            "spaces": [dict(mem.layout(), group=group_of[i],
                            shared_files=_shared_files(machine, mem))
                       for i, mem in enumerate(spaces)],
            "groups": len(groups),
            "procs": procs,
            "sched": {"threads": [_thread_record(machine, t, now) for t in threads],
                      "runq": [t.tid for t in sched.runq],
                      "futexes": [[a, [t.tid for t in w]] for a, w in sched.futexes.items()],
                      "next_tid": sched._next_id},
            "files": save_fd_tables(tables),
        }
        contexts = [context_bytes(t.context) for t in threads if t.context is not None]
    writer = StateWriter(path)
    touched = 0
    try:
        writer.section(b"META", json.dumps(meta).encode())
        writer.section(b"CTXT", b"".join(contexts))
        written: set[int] = set()
        for index, mem in enumerate(spaces):
            if group_of[index] not in written:
                written.add(group_of[index])
                with writer.stream(_tag("G", group_of[index])) as fd:
                    touched += mem.save_shared(fd)
        for index, mem in enumerate(spaces):
            with writer.stream(_tag("M", index)) as fd:
                touched += mem.save_own(fd)
        machine.fs.meta.compact()         # the guest's modes/owners travel in the layer
        with writer.stream(b"UPPR") as fd, os.fdopen(os.dup(fd), "wb") as out:
            write_upper(machine.fs.upper, out)
        history = getattr(machine.console, "history", None)
        if callable(history):  # the console ring travels with the state (worker_console.py)
            writer.section(b"CONS", history())
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"seconds": time.monotonic() - t0, "touched": touched,
            "bytes": path.stat().st_size}


def _tag(kind: str, index: int) -> bytes:
    if not 0 <= index < 1000:
        raise StateError(f"more than 1000 address spaces to save ({index})")
    return f"{kind}{index:03d}".encode()


# -- restore --------------------------------------------------------------------------------
def restore_machine(machine: Machine, path: Path) -> None:
    """Boot ``machine`` from the state file instead of the image (Machine.run calls this)."""
    reader = StateReader(path)
    try:
        meta = json.loads(reader.read(b"META"))
        _restore(machine, meta, reader)
        _restore_console(machine, reader)
    finally:
        reader.close()


def _restore_console(machine: Machine, reader: StateReader) -> None:
    """Seed the new console with the saved one's history (older state files have none)."""
    seed = getattr(machine.console, "restore_history", None)
    if b"CONS" not in reader.sections or not callable(seed):
        return
    try:
        seed(reader.read(b"CONS"))
    except ValueError as err:  # a bad history loses the old output, never the partition
        machine.event("ConsoleHistoryLost", f"the saved console history is unusable: {err}")


def _restore(machine: Machine, meta: dict[str, Any], reader: StateReader) -> None:
    spec = machine.spec
    upper = spec.upper
    if upper is None:
        machine._tmp_upper = tempfile.mkdtemp(prefix=f"viridian-{spec.name}-")
        upper = Path(machine._tmp_upper)
    machine.fs = Sandbox(spec.root, upper, spec.entrypoint)
    src, length = reader.open_section(b"UPPR")
    read_upper(src, length, machine.fs.upper)
    machine.arch = str(meta["arch"])
    if reader.version == 2:
        _restore_v2_process(machine, meta, reader)
    else:
        _restore_processes(machine, meta, reader)
    m = meta["machine"]
    machine.started = time.monotonic() - float(m["uptime"])
    machine.mono_offset_ns = int(m.get("mono_ns", time.monotonic_ns())) - time.monotonic_ns()
    machine.unknown = {int(k): int(v) for k, v in m["unknown"]}
    machine.vcpus = [Vcpu(machine, i) for i in range(spec.vcpus)]
    _restore_threads(machine, meta["sched"], reader.read(b"CTXT"))
    with machine.sched.cond:
        restore_vfork_waits(machine.procs, meta.get("procs", {}),
                            dict(machine.sched.threads))


def _restore_processes(machine: Machine, meta: dict[str, Any], reader: StateReader) -> None:
    """Version 3: every address space (sharing restored memfds as they shared them when
    saved), the fd tables, the process tree and its signal state."""
    layouts = meta["spaces"]
    groups: dict[int, int] = {}
    spaces: list[GuestMemory] = []
    try:
        for index, layout in enumerate(layouts):
            group = int(layout["group"])
            if not 0 <= group < int(meta["groups"]):
                raise StateError(f"address space {index} names memory group {group}")
            if group not in groups:
                src, length = reader.open_section(_tag("G", group))
                groups[group] = GuestMemory.load_shared(int(layout["size"]), src, length)
            src, length = reader.open_section(_tag("M", index))
            spaces.append(GuestMemory.restore(layout, groups[group], src, length))
            _map_shared_files(machine, spaces[-1], layout.get("shared_files", []))
    except ValueError as exc:
        for mem in spaces:
            mem.close()
        raise StateError(str(exc)) from exc
    finally:
        for fd in groups.values():
            os.close(fd)
    if not spaces:
        raise StateError("the saved state has no address space")
    placeholder = spaces[0]
    fd_tables = restore_fd_tables(machine, meta["files"])
    restore_processes(machine.procs, meta["procs"], spaces, fd_tables, placeholder)
    for rec in meta["procs"]["processes"]:
        proc = machine.processes[int(rec["pid"])]
        if proc.exit_status is None:
            proc.signals.restore(rec.get("signals", {}), proc, machine)


def _shared_files(machine: Machine, mem: GuestMemory) -> list[list[Any]]:
    """[lo, hi, offset, guest path] of ``mem``'s MAP_SHARED file ranges whose file is in the
    writable layer (where every writable open is): the restore maps them again. A file with
    no name left is not listed; its pages come back as ordinary memory."""
    upper = os.path.realpath(machine.fs.upper)
    out: list[list[Any]] = []
    for lo, hi, off, host in mem.shared_files():
        if host and os.path.commonpath([upper, host]) == upper and host != upper:
            out.append([lo, hi, off, "/" + os.path.relpath(host, upper)])
    return out


def _map_shared_files(machine: Machine, mem: GuestMemory, ranges: list[Any]) -> None:
    """Map a restored space's MAP_SHARED file ranges again (the upper layer is restored by
    now), so that the guest's later writes reach the file as before the save."""
    for lo, hi, off, gpath in ranges:
        found = machine.fs.host_path(str(gpath))
        mapped = False
        if found is not None and found[1]:
            try:
                fd = os.open(found[0], os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    mapped = mem.map_shared_file(int(lo), int(hi), fd, int(off))
                finally:
                    os.close(fd)
        if not mapped:
            machine.event("SharedMappingLost", f"the MAP_SHARED mapping of {gpath} comes back "
                          "as ordinary memory: its file could not be mapped again")


def _restore_v2_process(machine: Machine, meta: dict[str, Any], reader: StateReader) -> None:
    """Version 2 (one process): its memory, fd table and signal state."""
    spec = machine.spec
    lay = meta["memory"]
    mem = GuestMemory(lay["base"], lay["image_end"], lay["memory_bytes"],
                      64 if machine.arch == "x86_64" else 32)
    if mem.size != lay["size"]:
        mem.close()
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
    init.gdt_free = [int(slot) for slot in m["gdt_free"]]
    init.fds = restore_files(machine, meta["files"])
    init.signals.restore(m.get("signals", {}), init, machine)   # armed timers count on


def _restore_threads(machine: Machine, data: dict[str, Any], contexts: bytes) -> None:
    sched = machine.sched
    vcpu = machine.vcpus[0]
    size = _context_data(vcpu.uc.context_save())[1]
    by_tid: dict[int, GuestThread] = {}
    stdin_waits: list[tuple[GuestThread, int, int]] = []
    now = time.monotonic()
    pos = 0
    with sched.cond:
        for rec in data["threads"]:
            owner = machine.processes.get(int(rec.get("pid", 1)))
            if owner is None or owner.exit_status is not None:
                raise StateError(f"thread {rec['tid']} belongs to no live process")
            thread = GuestThread(tid=int(rec["tid"]), process=owner,
                                 clear_tid=rec["clear_tid"], gdt=rec["gdt"],
                                 fresh=rec["fresh"])
            if rec.get("restart") is not None:
                thread.restart = {int(k): int(v) for k, v in rec["restart"]}
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
            restore_deadline(thread, rec.get("deadline"), now)
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
