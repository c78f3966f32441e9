"""A partition: guest memory, the loaded image, the sandbox, vCPUs and their scheduler."""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .files import ConsoleFile
from .fs import Sandbox
from .gdt import GDT_SIZE, TLS_MAX, TLS_MIN, boot_frame, flat_gdt, user_desc_to_descriptor
from .loader import validate_image
from .memory import ALLOWANCE, GDT_AREA, GuestFault, GuestMemory, format_size
from .process import Process
from .proctable import ProcessTable, signal_status
from .program import load_program
from .registers import start_registers
from .signals import SI_KERNEL, SI_USER, SIG_DFL, SIG_IGN, SigInfo, send
from .spec import STOP_EXIT_CODE, Console, ExitStatus, ImageError, PartitionSpec
from .syscall_counts import SyscallCounts
from .syscalls.common import BLOCK, E
from .threads import BLOCKED, GuestThread, Scheduler
from .vcpu import QUANTUM, Vcpu

__all__ = ["Machine", "validate_image", "MAX_UNKNOWN_TRACKED", "UNKNOWN_OTHERS"]

#: Distinct unknown syscall numbers counted one by one; the guest picks the numbers, so
#: every further number is summed under UNKNOWN_OTHERS (and reported once).
MAX_UNKNOWN_TRACKED = 64
UNKNOWN_OTHERS = -1
SIGKILL, SIGTERM, SIGCHLD = 9, 15, 17
#: How often the partition-wide memory bound is measured while several processes live.
MEMORY_CHECK_S = 0.2


class Machine:
    """Runs one partition's guest to completion on ``spec.vcpus`` Unicorn instances."""

    def __init__(self, spec: PartitionSpec, console: Console,
                 on_event: Callable[[str, str], None] | None = None) -> None:
        self.spec = spec
        self.console = console
        self.on_event = on_event
        self.unknown: dict[int, int] = {}
        #: syscalls made, by number (the worker swaps in its shared file: count_syscalls)
        self.syscall_counts = SyscallCounts()
        self._unknown_lock = threading.Lock()
        self.init: Process | None = None     # pid 1: the entrypoint's process
        self.processes: dict[int, Process] = {}   # every live or zombie process, by pid
        self.started = time.monotonic()
        self._stop_requested = False
        self.vcpus: list[Vcpu] = []
        self.sched = Scheduler()
        self.sched.on_done = self._halt_all
        self.procs = ProcessTable(self)
        self._ended = threading.Event()         # set when the partition ends (sched.finish)
        self._dead_mems: list[GuestMemory] = []    # ended address spaces vCPUs still map
        self._mem: GuestMemory | None = None   # pid 1's address space (see ``mem``)
        self._tmp_upper: str | None = None
        self._restore_from: Path | None = None
        self._saved = False
        self._lifecycle = threading.Lock()     # serialises pause/resume/save
        self._uc_lock = threading.Lock()       # no emu_stop on a Unicorn being freed
        self.mono_offset_ns = 0                # guest CLOCK_MONOTONIC - host's (restore)

    @property
    def mem(self) -> GuestMemory | None:
        """pid 1's address space (it changes when pid 1 execs)."""
        return self.init.mem if self.init is not None else self._mem

    @mem.setter
    def mem(self, value: GuestMemory | None) -> None:
        self._mem = value
        if self.init is not None and value is not None:
            self.init.mem = value

    @classmethod
    def restore(cls, spec: PartitionSpec, console: Console, state: Path,
                on_event: Callable[[str, str], None] | None = None) -> Machine:
        """A machine whose ``run()`` continues the guest saved in ``state`` (save_state)."""
        machine = cls(spec, console, on_event)
        machine._restore_from = Path(state)
        return machine

    # -- public API ---------------------------------------------------------------
    def run(self) -> ExitStatus:
        """Run the guest until it exits, faults or is stopped; never raises for the guest."""
        try:
            failure = self._boot() if self._restore_from is None else self._boot_restored()
        except ImageError as exc:
            failure = str(exc)
        except MemoryError as exc:
            failure = f"cannot start: {exc}"
        except Exception as exc:  # noqa: BLE001 - never let a start-up problem escape
            failure = f"cannot start: {exc!r}"
        if failure is not None:
            self._cleanup()
            return ExitStatus(None, failure, dict(self.unknown))
        threads = [threading.Thread(target=v.run, name=f"{self.spec.name}-vcpu{v.index}",
                                    daemon=True) for v in self.vcpus]
        threads.append(threading.Thread(target=self._watch_memory, daemon=True,
                                        name=f"{self.spec.name}-memory"))
        for t in threads:
            t.start()
        self._tick()
        for t in threads:
            t.join()
        self._cleanup()
        if self._saved:
            return ExitStatus(None, None, dict(self.unknown), saved=True)
        if self._stop_requested and self.sched.exit_code == STOP_EXIT_CODE:
            return ExitStatus(STOP_EXIT_CODE, None, dict(self.unknown))
        return ExitStatus(self.sched.exit_code, self.sched.failed_reason, dict(self.unknown))

    def count_syscalls(self, counts: SyscallCounts) -> None:
        """Count syscalls into ``counts`` (the worker's shared file); before ``run()``."""
        self.syscall_counts = counts

    def stop(self, grace: float = 0.0) -> None:
        """Stop the partition (thread-safe). With ``grace`` > 0 it is Hyper-V's Shut Down:
        SIGTERM to every process, and whatever still runs ``grace`` seconds later is turned
        off; with 0 it is Turn Off, at once. ``run`` then returns exit code 143, or pid 1's
        own status if it ended within the grace period. pid 1 is init: a SIGTERM it has no
        handler for does nothing to it (signals.init_discards), so when it is the only
        process and has none, nothing can react and the partition is turned off at once."""
        self._stop_requested = True
        if grace <= 0:
            self.sched.finish(STOP_EXIT_CODE)
            return
        with self.sched.cond:
            live = [p for p in self.processes.values() if p.exit_status is None]
        if not live:                    # not started yet (or already ending): nothing to ask
            self.sched.finish(STOP_EXIT_CODE)
            return
        for process in live:
            self.signal_process(process, SIGTERM)
        with self.sched.cond:
            alone = [p for p in self.processes.values() if p.exit_status is None]
            deaf = (len(alone) == 1 and alone[0].pid == 1
                    and alone[0].signals.actions[SIGTERM].handler in (SIG_DFL, SIG_IGN))
        if deaf:
            self.sched.finish(STOP_EXIT_CODE)
            return
        timer = threading.Timer(grace, self.sched.finish, args=(STOP_EXIT_CODE,))
        timer.daemon = True
        timer.start()

    def pause(self, timeout: float = 10.0) -> None:
        """Stop every vCPU at an instruction boundary and park all guest threads.

        Running threads are stopped asynchronously at their next translation-block start
        (needs the asyncstop unicorn patch, docs/unicorn-patch.md); threads in a syscall
        finish it first; blocked threads stay blocked and their timeouts stand still.
        Raises RuntimeError (and stays running) if that does not happen within ``timeout``.
        """
        sched = self.sched
        with self._lifecycle:
            with sched.cond:
                if sched.done:
                    raise RuntimeError("the partition is not running")
                if sched.paused:
                    return
                sched.set_paused(True)
            deadline = time.monotonic() + timeout
            while True:
                with sched.cond:
                    busy = [v for v in self.vcpus if v.thread is not None]
                    busy_threads = any(t.on_cpu for t in sched.threads.values())
                    if sched.done or (not busy and not busy_threads):
                        break
                if time.monotonic() >= deadline:
                    with sched.cond:
                        sched.set_paused(False)
                    raise RuntimeError(
                        f"pause timed out after {timeout:g}s: {len(busy)} vCPU(s) did not "
                        "stop (a guest thread stuck in a syscall?)")
                with self._uc_lock:
                    for vcpu in busy:
                        if vcpu in self.vcpus:
                            vcpu.kick()
                with sched.cond:
                    sched.cond.wait(0.002)
            if sched.done:
                raise RuntimeError("the partition ended while pausing")

    def resume(self) -> None:
        with self._lifecycle, self.sched.cond:
            self.sched.set_paused(False)

    @property
    def paused(self) -> bool:
        return self.sched.paused

    def save_state(self, path: Path) -> dict[str, float]:
        """Write the complete state to ``path`` (tmp + rename); only while paused."""
        from .snapshot import save_machine

        with self._lifecycle:
            if not self.sched.paused or self.sched.done:
                raise RuntimeError("save_state needs a paused, running partition")
            assert self.mem is not None
            self.mem.populate_files()     # the state file holds their pages, not the files
            return save_machine(self, Path(path))

    def end_saved(self) -> None:
        """After save_state: end the partition; run() returns ExitStatus(saved=True)."""
        self._saved = True
        self.sched.finish(None)

    # -- boot ------------------------------------------------------------------------
    def _boot(self) -> str | None:
        spec = self.spec
        upper = spec.upper
        if upper is None:
            self._tmp_upper = tempfile.mkdtemp(prefix=f"viridian-{spec.name}-")
            upper = Path(self._tmp_upper)
        self.fs = Sandbox(spec.root, upper, spec.entrypoint)
        cwd = self._start_directory(spec.cwd)
        if cwd is None:
            return f"cannot start: working directory {spec.cwd[:200]!r} is not a directory " \
                "in the image"
        argv = [spec.entrypoint, *spec.args]
        env = [f"{k}={v}" for k, v in spec.env]
        program = load_program(self.fs, spec.entrypoint, argv, env, spec.memory_bytes, "/")
        self.fs.exe = program.exe
        self.arch, self.mem, sp = program.arch, program.mem, program.sp
        # The first instruction is the boot page's iret: it drops to CPL 3 (gdt.py).
        code, frame = boot_frame(program.arch, program.entry, sp)
        self.mem.host_write(self.mem.boot, code)
        self.mem.write(sp - len(frame), frame)
        self.init = Process(pid=1, mem=self.mem, cwd=cwd, exe=program.exe, argv=program.argv,
                            gdt_free=list(range(GDT_AREA // GDT_SIZE)))
        self.processes = {1: self.init}
        for fd, flags in ((0, 0), (1, 1), (2, 1)):
            self.init.fds.add(ConsoleFile(flags, self.console, fd), minimum=fd)
        main = self.sched.new_thread(self.init, first=True)
        assert main is not None
        main.gdt = self.alloc_gdt(self.init)
        main.pending = start_registers(self.init.is64, self.mem.boot, sp - len(frame))
        self.vcpus = [Vcpu(self, i) for i in range(spec.vcpus)]
        self.sched.start(main)
        return None

    def _start_directory(self, path: str) -> str | None:
        """pid 1's working directory: ``path`` resolved in the sandbox (symlinks followed
        inside it), or None unless it is an absolute path naming a directory."""
        if not path.startswith("/"):
            return None
        try:
            return self.fs.chdir_at(path, "/")
        except (OSError, ValueError):
            return None

    def _boot_restored(self) -> str | None:
        from .snapshot import restore_machine

        assert self._restore_from is not None
        t0 = time.monotonic()
        try:
            restore_machine(self, self._restore_from)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"cannot restore saved state: {exc}"
        self.event("Restored", f"state {self._restore_from.name} applied in "
                   f"{time.monotonic() - t0:.3f}s")
        return None

    def _tick(self) -> None:
        """The caller's thread: fire sleep/futex timers while every vCPU is busy, and
        preempt threads that used a full quantum while others wait for a vCPU."""
        sched = self.sched
        with sched.cond:
            while not sched.done:
                deadline = sched.next_deadline()
                timeout = 0.5 if deadline is None else max(deadline - time.monotonic(), 0.0005)
                timeout = min(timeout, self._preempt())
                sched.cond.wait(timeout)
                sched._fire_timers()

    def _preempt(self) -> float:
        """Caller holds ``sched.cond``. Kick (stop at the next translation-block start) each
        vCPU whose thread has run ``QUANTUM`` while threads wait in the run queue, longest
        first, one per waiting thread. Returns the seconds until the next check is due."""
        sched = self.sched
        if not sched.runq or sched.paused:
            return 0.5                          # a queued thread notifies cond
        now = time.monotonic()
        waiting = len(sched.runq)
        due = QUANTUM
        for vcpu in sorted(self.vcpus, key=lambda v: v.run_started):
            if vcpu.thread is None:
                continue
            used = now - vcpu.run_started
            if used >= QUANTUM and waiting > 0:
                with self._uc_lock:
                    if vcpu in self.vcpus:
                        vcpu.kick()
                waiting -= 1
            else:
                due = min(due, QUANTUM - used)
        return max(due, 0.001)

    def _watch_memory(self) -> None:
        """The memory bound counts every process. One process cannot pass it (its address
        space is the partition's size), but a fork shares pages copy-on-write and the
        processes may then write them apart: while more than one process lives, this
        measures what they hold together every MEMORY_CHECK_S and, past the bound, kills
        the process holding the most memory of its own with SIGKILL, as Linux's OOM
        killer does inside a memory cgroup (pid 1 too: then the partition fails)."""
        budget = self.spec.memory_bytes + ALLOWANCE
        # Not sched.cond.wait: every scheduling event notifies it, and a pipeline would
        # then be measured thousands of times a second instead of every MEMORY_CHECK_S.
        while not self._ended.wait(MEMORY_CHECK_S):
            with self.sched.cond:
                if self.sched.done:
                    return
                if self.sched.paused:
                    continue
                live = [p for p in self.processes.values() if p.exit_status is None]
            if len(live) < 2:
                continue
            try:
                used = self.procs.memory_in_use()
                if used <= budget:
                    continue
                victim = max(live, key=lambda p: (p.mem.private_bytes(), p.pid))
            except (OSError, ValueError):
                continue                     # an address space closed meanwhile: next time
            self.event("OutOfMemory",
                       f"the partition's processes hold {format_size(used)}, more than its "
                       f"{format_size(self.spec.memory_bytes)}: killed pid {victim.pid} "
                       f"({victim.exe})")
            if victim.pid == 1:
                self.procs.exit_process(victim, signal_status(SIGKILL),
                                        reason="out of memory: pid 1 was killed")
            else:
                self.signal_process(victim, SIGKILL)

    def _halt_all(self) -> None:
        self._ended.set()
        with self._uc_lock:
            for vcpu in self.vcpus:
                vcpu.halt()

    def _cleanup(self) -> None:
        for process in list(self.processes.values()):
            process.fds.close_all()
        with self._uc_lock:
            for vcpu in self.vcpus:
                vcpu.close()
            self.vcpus = []
        others = {id(p.mem): p.mem for p in self.processes.values() if p.mem is not self.mem}
        others.update((id(m), m) for m in self._dead_mems if m is not self.mem)
        for mem in others.values():
            mem.close()
        self._dead_mems = []
        if self.mem is not None:
            self.mem.close()
        self._mem = None
        if self._tmp_upper is not None:
            shutil.rmtree(self._tmp_upper, ignore_errors=True)

    # -- services for syscalls ----------------------------------------------------------
    def unknown_syscall(self, nr: int, arch: str) -> None:
        """Count an ENOSYS (of an ``arch`` process); at most MAX_UNKNOWN_TRACKED numbers
        (and events), the rest summed under UNKNOWN_OTHERS."""
        message = None
        with self._unknown_lock:
            if nr not in self.unknown and len(self.unknown) >= MAX_UNKNOWN_TRACKED:
                if UNKNOWN_OTHERS not in self.unknown:
                    message = (f"syscall {nr} ({arch}) returned ENOSYS; after "
                               f"{MAX_UNKNOWN_TRACKED} distinct unknown syscalls, further "
                               f"ones are counted together under {UNKNOWN_OTHERS}")
                nr = UNKNOWN_OTHERS
            elif nr not in self.unknown:
                message = f"syscall {nr} ({arch}) returned ENOSYS"
            self.unknown[nr] = self.unknown.get(nr, 0) + 1
        if message is not None:
            self.event("UnknownSyscall", message)

    def raise_signal(self, thread: GuestThread, sig: int) -> None:
        """Send ``sig`` to ``thread`` (SIGPIPE from a write): signals.py queues it and the
        thread delivers it (handler or default action) when its syscall returns."""
        send(self, thread.process, thread, SigInfo(sig, SI_USER, pid=thread.process.pid),
             current=thread)

    def signal_process(self, process: Process, sig: int) -> None:
        """Send ``sig`` to ``process`` from outside the partition (Shut Down, the OOM kill):
        one of its threads that does not block it takes it (handler or default action,
        signals.py); pid 1 gets only SIGKILL, SIGSTOP and what it has a handler for."""
        if sig:
            send(self, process, None, SigInfo(sig, SI_KERNEL), external=True)

    def child_changed(self, parent: Process, child: Process) -> None:
        """A child of ``parent`` ended: SIGCHLD (ignored by default) with CLD_EXITED,
        CLD_KILLED or CLD_DUMPED, its pid and status."""
        status = child.exit_status or 0
        if status & 0x7F:
            code, value = (3 if status & 0x80 else 2), status & 0x7F
        else:
            code, value = 1, (status >> 8) & 0xFF
        send(self, parent, None, SigInfo(SIGCHLD, code, pid=child.pid, status=value,
                                         kind="chld"))

    def kick_thread(self, thread: GuestThread) -> None:
        """Make the vCPU running ``thread`` (if any) stop at its next block boundary."""
        with self._uc_lock:
            for vcpu in self.vcpus:
                if vcpu.thread is thread:
                    vcpu.kick()

    def retire_memory(self, mem: GuestMemory) -> None:
        """An address space lost a user (exit, execve): once no live process uses it, every
        vCPU drops its Unicorn instance for it and its host mapping is released."""
        with self.sched.cond:
            if any(p.mem is mem and p.exit_status is None for p in self.processes.values()):
                return
            if mem is self.mem or mem in self._dead_mems:
                return
            self._dead_mems.append(mem)
        self.collect_memory()

    def collect_memory(self) -> None:
        """Release the retired address spaces no vCPU is running any more."""
        with self._uc_lock:
            for mem in list(self._dead_mems):
                if all(vcpu.drop_space(mem) for vcpu in self.vcpus):
                    self._dead_mems.remove(mem)
                    mem.close()

    def event(self, reason: str, message: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(reason, message)
            except Exception:  # noqa: BLE001 - a listener bug must not kill the guest
                pass

    def log_error(self, text: str) -> None:
        sys.stderr.write(f"viridian runtime error in partition {self.spec.name}:\n{text}")

    def read_stdin(self, thread: GuestThread, buf: int, count: int) -> int:
        """Park ``thread`` while a helper thread waits for console input (so a vCPU never
        blocks on stdin and ``stop`` always works); returns BLOCK."""
        sched = self.sched
        with sched.cond:
            sched.block(thread, None, 0)
            thread.stdin_wait = (buf, count)
            token = thread.token

        def reader() -> None:
            try:
                data = self.console.read_stdin(min(count, 1 << 16))
            except Exception:  # noqa: BLE001 - a broken console reads as EOF
                data = b""
            with sched.cond:
                while sched.paused and not sched.done:   # no guest memory writes while paused
                    sched.cond.wait()
                if sched.done or thread.state != BLOCKED or thread.token != token:
                    return
                thread.stdin_wait = None
                try:
                    thread.process.mem.write(buf, data)
                    result = len(data)
                except GuestFault:
                    result = E.FAULT
                sched.wake(thread, result)

        threading.Thread(target=reader, name=f"{self.spec.name}-stdin", daemon=True).start()
        return BLOCK

    def alloc_gdt(self, process: Process) -> int:
        """A GDT of its own in ``process``'s address space (every i386 thread; the x86_64
        main thread, whose GDT the process's other threads share)."""
        mem = process.mem
        with self.sched.cond:
            if not process.gdt_free:
                raise OSError(11, "no free GDT slot")
            slot = process.gdt_free.pop(0)
        addr = mem.reserved + slot * GDT_SIZE
        mem.host_write(addr, flat_gdt(process.arch))
        return addr

    def free_gdt(self, thread: GuestThread) -> None:
        """Return an exited i386 thread's GDT slot (x86_64 threads share the first one)."""
        if thread.gdt and not thread.process.is64:
            with self.sched.cond:
                slot = (thread.gdt - thread.process.mem.reserved) // GDT_SIZE
                if slot not in thread.process.gdt_free:
                    thread.process.gdt_free.append(slot)
            thread.gdt = 0

    def set_thread_area(self, thread: GuestThread, ptr: int) -> int:
        """i386 set_thread_area: write a TLS descriptor into ``thread``'s own GDT."""
        mem = thread.process.mem
        entry, base, limit, flags = struct.unpack("<iIII", mem.read(ptr, 16))
        if entry == -1:
            for candidate in range(TLS_MIN, TLS_MAX + 1):
                if mem.host_read(thread.gdt + 8 * candidate, 8) == bytes(8):
                    entry = candidate
                    break
            else:
                return -16                                    # ESRCH-like: EBUSY
            mem.put_u32(ptr, entry)
        if not TLS_MIN <= entry <= TLS_MAX:
            return E.INVAL
        desc = user_desc_to_descriptor(base, limit, flags)
        mem.host_write(thread.gdt + 8 * entry, struct.pack("<Q", desc))
        return 0
