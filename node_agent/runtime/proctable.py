"""The partition's process table: fork, execve, exit, wait, process groups and sessions.

Every guest process of a partition lives in this one host process and shares its
scheduler, so all their threads share the partition's vCPUs. pids and tids come from one
number space (threads.py ``alloc_id``); a process's main thread has its pid. A process that
ends stays a zombie holding its pid and wait status until its parent reaps it; its children
go to pid 1. When pid 1 ends, the partition ends with its exit status.

Everything here runs under the scheduler's lock (``sched.cond``) except what may block on
other locks: closing descriptors and releasing memory happen after it is dropped.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import accounting
from .files import FdTable
from .gdt import GDT_SIZE
from .memory import GuestMemory
from .process import Process
from .procfs import resident_bytes
from .signals import SA_NOCLDSTOP, SIG_IGN, SigInfo, send
from .threads import BLOCKED, DEAD, PID_MAX, RESTART, GuestThread
from .vmas import inherit as inherit_vmas

if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["ProcessTable", "WaitRequest", "WaitReport", "exit_status", "signal_status",
           "save_processes", "restore_processes", "restore_vfork_waits"]

#: Processes (live and zombie) a partition may hold: a fork bomb gets EAGAIN past this.
WNOHANG, WUNTRACED, WEXITED, WCONTINUED, WNOWAIT = 1, 2, 4, 8, 0x01000000
WSTOPPED = WUNTRACED
P_ALL, P_PID, P_PGID = 0, 1, 2
SIGCHLD, SIGCONT = 17, 18
CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_STOPPED, CLD_CONTINUED = 1, 2, 3, 5, 6
#: wait4's status word of a continued child (WIFCONTINUED)
CONTINUED_STATUS = 0xFFFF
ECHILD, EINVAL, EPERM, ESRCH, EAGAIN = 10, 22, 1, 3, 11


def exit_status(code: int) -> int:
    """The wait status of a process that called exit(code)."""
    return (code & 0xFF) << 8


def signal_status(sig: int, core: bool = False) -> int:
    """The wait status of a process killed by ``sig``."""
    return (sig & 0x7F) | (0x80 if core else 0)


@dataclass(frozen=True)
class WaitRequest:
    """What wait4/waitpid/waitid asked for: which children, and what to do on a match."""

    kind: int              # P_ALL, P_PID or P_PGID
    ident: int             # the pid or pgid (P_PID/P_PGID)
    options: int


@dataclass(frozen=True)
class WaitReport:
    """What a wait call reports of one child: the change (``code``: CLD_EXITED, CLD_KILLED,
    CLD_DUMPED, CLD_STOPPED or CLD_CONTINUED), wait4's status word, waitid's si_status,
    and its rusage (the child's CPU seconds and its reaped children's; peak RSS in KiB)."""

    child: Process
    code: int
    status: int
    value: int
    utime: float
    stime: float
    maxrss: int


def _ended(status: int) -> tuple[int, int]:
    """(si_code, si_status) of a child that ended with wait status ``status``."""
    if status & 0x7F:
        return (CLD_DUMPED if status & 0x80 else CLD_KILLED), status & 0x7F
    return CLD_EXITED, (status >> 8) & 0xFF


class ProcessTable:
    """Process lifecycle for one partition (the kernel side of fork/exec/exit/wait)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.sched = machine.sched
        self.limit = machine.spec.max_processes     # fork/clone past it: EAGAIN
        self.sched.taken_ids = lambda pid: pid in machine.processes
        self._waiters: dict[int, list[tuple[GuestThread, int]]] = {}   # pid -> wait4 callers
        self._vfork: dict[int, tuple[GuestThread, int]] = {}           # child pid -> parent
        self._space_uids = 0

    def new_space_uid(self) -> int:
        """A number for a new address space's futex keys (memory.py ``futex_key``)."""
        self._space_uids += 1
        return self._space_uids

    @property
    def processes(self) -> dict[int, Process]:
        return self.machine.processes

    # -- fork ----------------------------------------------------------------------------
    def fork(self, parent_thread: GuestThread,
             share_memory: bool) -> tuple[Process, GuestThread] | int:
        """A new process copying ``parent_thread``'s process (its memory unless
        ``share_memory``: CLONE_VM). Returns (child, its main thread) or a negative errno.
        The child's thread is not started; the caller sets its registers first."""
        parent = parent_thread.process
        if len(self.processes) >= self.limit:
            return -EAGAIN
        mem = parent.mem if share_memory else None
        if mem is None:                 # copy-on-write; Machine._watch_memory bounds the sum
            try:
                mem = parent.mem.clone()
            except MemoryError:
                return -12
            mem.uid = self.new_space_uid()
        with self.sched.cond:
            pid = self.sched.alloc_id()
            if pid is None or len(self.processes) >= self.limit:
                if not share_memory:
                    mem.close()
                return -EAGAIN
            child = Process(pid=pid, mem=mem, fds=parent.fds.fork_copy(), cwd=parent.cwd,
                            umask=parent.umask, exe=parent.exe, argv=list(parent.argv),
                            ppid=parent.pid, pgid=parent.pgid, sid=parent.sid)
            child.gdt_free = list(parent.gdt_free)
            if not share_memory and not parent.is64:
                # the parent's other threads do not exist in the child: their GDTs are free
                for other in self.threads_of(parent):
                    if other is not parent_thread and other.gdt:
                        child.gdt_free.append((other.gdt - mem.reserved) // GDT_SIZE)
                child.gdt_free.sort()
            child.signals = parent.signals.fork_copy()
            child.comm = parent.thread_comm.get(parent_thread.tid, parent.comm)
            child.personality = parent.personality
            if not share_memory:
                inherit_vmas(parent.mem, mem)
            thread = self.sched.new_thread(child, tid=pid)
            if thread is None:
                if not share_memory:
                    mem.close()
                return -EAGAIN
            thread.gdt = parent_thread.gdt
            self.processes[pid] = child
            parent.children.append(child)
        return child, thread

    def memory_in_use(self) -> int:
        """Bytes of guest memory the partition's live processes hold: each shared memfd
        once, plus every address space's private pages."""
        shared: dict[tuple[int, int], int] = {}
        private = 0
        seen: set[int] = set()
        for proc in list(self.processes.values()):
            if proc.exit_status is not None or id(proc.mem) in seen:
                continue
            seen.add(id(proc.mem))
            shared[proc.mem.shared_key()] = proc.mem.shared_bytes()
            private += proc.mem.private_bytes()
        return sum(shared.values()) + private

    def vfork_wait(self, parent_thread: GuestThread, child: Process) -> None:
        """Caller holds ``sched.cond``: park the vfork parent until the child execs or
        ends (its result, the child's pid, is set then)."""
        self.sched.block(parent_thread, None, 0, restart=None)   # no signal ends it
        self._vfork[child.pid] = (parent_thread, parent_thread.token)

    def _release_vfork(self, child: Process) -> None:
        """Caller holds ``sched.cond``."""
        entry = self._vfork.pop(child.pid, None)
        if entry is not None:
            thread, token = entry
            if thread.state == BLOCKED and thread.token == token:
                self.sched.wake(thread, child.pid)

    # -- exec ---------------------------------------------------------------------------
    def exec_done(self, thread: GuestThread, old_mem: GuestMemory) -> None:
        """After execve replaced ``thread``'s process image: end its other threads, let a
        vfork parent go on, and release the old memory unless someone still uses it."""
        process = thread.process
        with self.sched.cond:
            for other in self.threads_of(process):
                if other is not thread:
                    other.gdt = 0             # it was in the old address space, now gone
                    self._kill_thread(other)
            self._release_vfork(process)
        self.machine.retire_memory(old_mem)

    # -- exit ---------------------------------------------------------------------------
    def threads_of(self, process: Process) -> list[GuestThread]:
        """Caller holds ``sched.cond``."""
        return [t for t in self.sched.threads.values() if t.process is process]

    def thread_exit(self, thread: GuestThread, code: int) -> None:
        """exit(2): the thread ends; its process ends with ``code`` if it was the last."""
        with self.sched.cond:
            self._kill_thread(thread)
            last = not self.threads_of(thread.process)
        if last:
            self.exit_process(thread.process, exit_status(code))

    def exit_process(self, process: Process, wait_status: int,
                     reason: str | None = None) -> None:
        """End every thread of ``process`` and make it a zombie with ``wait_status``
        (exit_group, a fatal signal, the last thread's exit). pid 1 ends the partition:
        with its exit code, or as failed with ``reason`` when one is given."""
        rss = resident_bytes(process.mem) // 1024 if process.exit_status is None else 0
        with self.sched.cond:
            if process.exit_status is not None:
                return
            accounting.charge_running(self.machine, process)   # before the parent can reap
            accounting.note_rss(process, rss)
            process.exit_status = wait_status
            process.ended = time.monotonic()
            for thread in self.threads_of(process):
                self._kill_thread(thread)
            self._release_vfork(process)
            init = self.processes.get(1)
            for child in process.children:
                child.ppid = 1
                if init is not None and init is not process:
                    init.children.append(child)
                    if child.exit_status is not None:
                        self._wake_waiters(1)
            process.children = []
            parent = self.processes.get(process.ppid)
            if process.pid != 1:
                self._wake_waiters(process.ppid)
        process.fds.close_all()
        if process.pid == 1:
            if reason is not None:
                self.sched.finish(None, reason)
            elif wait_status & 0x7F:
                self.sched.finish(128 + (wait_status & 0x7F))
            else:
                self.sched.finish((wait_status >> 8) & 0xFF)
            return
        self.machine.retire_memory(process.mem)
        if parent is not None and parent.exit_status is None:
            self.machine.child_changed(parent, process)

    def _kill_thread(self, thread: GuestThread) -> None:
        """Caller holds ``sched.cond``: the thread never runs again."""
        if thread.state == DEAD:
            return
        thread.state = DEAD
        thread.token += 1                     # stale timers and wait-queue entries
        self.sched._unwait(thread)
        self.sched.threads.pop(thread.tid, None)
        try:
            self.sched.runq.remove(thread)
        except ValueError:
            pass
        if thread.on_cpu:
            self.machine.kick_thread(thread)
        self.machine.free_gdt(thread)

    # -- wait ---------------------------------------------------------------------------
    def wait(self, thread: GuestThread, request: WaitRequest) -> WaitReport | int:
        """Caller holds ``sched.cond``. The report of a child that changed as ``request``
        asks (WEXITED: it ended, and is reaped unless WNOWAIT; WSTOPPED: it stopped;
        WCONTINUED: it was continued; a stop or continue is reported once unless WNOWAIT),
        0 for WNOHANG with none ready, -ECHILD without a child that could be reported, or
        -1 after parking ``thread`` until a child changes state (it then re-issues the
        call). Children are looked at oldest first, as Linux does."""
        parent = thread.process
        options = request.options
        keep = bool(options & WNOWAIT)
        eligible = False
        for child in [c for c in parent.children if self._matches(c, request)]:
            if child.exit_status is not None:
                if not options & WEXITED:
                    continue                    # an ended child is not what it waits for
                report = self._report(child, *_ended(child.exit_status), child.exit_status)
                if not keep:
                    parent.children.remove(child)
                    self.processes.pop(child.pid, None)
                    accounting.reap(parent, child)
                return report
            eligible = True
            ps = child.signals
            if options & WSTOPPED and ps.stopped and ps.stop_report:
                sig = ps.stop_report
                if not keep:
                    ps.stop_report = 0
                return self._report(child, CLD_STOPPED, sig, 0x7F | (sig << 8))
            if options & WCONTINUED and ps.cont_report:
                if not keep:
                    ps.cont_report = False
                return self._report(child, CLD_CONTINUED, SIGCONT, CONTINUED_STATUS)
        if not eligible:
            return -ECHILD
        if options & WNOHANG:
            return 0
        self.sched.block(thread, None, 0)
        self._waiters.setdefault(parent.pid, []).append((thread, thread.token))
        return -1

    def _report(self, child: Process, code: int, value: int, status: int) -> WaitReport:
        """Caller holds ``sched.cond``: ``child``'s report with its rusage (its own CPU
        time and its reaped children's, as Linux's wait gives RUSAGE_BOTH)."""
        user, system = accounting.process_times(self.machine, child)
        return WaitReport(child, code, status, value, user + child.cutime,
                          system + child.cstime, max(child.maxrss, child.cmaxrss))

    def job_changed(self, process: Process, code: int, sig: int) -> None:
        """Caller holds ``sched.cond``: ``process`` stopped (CLD_STOPPED, by ``sig``) or was
        continued (CLD_CONTINUED). Its parent's waiters look again, and the parent gets
        SIGCHLD unless its SIGCHLD action is SIG_IGN or has SA_NOCLDSTOP (as Linux's
        do_notify_parent_cldstop)."""
        parent = self.processes.get(process.ppid)
        if parent is None or parent.exit_status is not None or process.pid == 1:
            return
        self._wake_waiters(parent.pid)
        action = parent.signals.actions[SIGCHLD]
        if action.handler != SIG_IGN and not action.flags & SA_NOCLDSTOP:
            send(self.machine, parent, None,
                 SigInfo(SIGCHLD, code, pid=process.pid, status=sig, kind="chld"))

    def _matches(self, child: Process, request: WaitRequest) -> bool:
        if request.kind == P_PID:
            return child.pid == request.ident
        if request.kind == P_PGID:
            return child.pgid == request.ident
        return True

    def _wake_waiters(self, pid: int) -> None:
        """Caller holds ``sched.cond``: every wait4 caller of ``pid`` runs its call again."""
        for thread, token in self._waiters.pop(pid, []):
            if thread.state == BLOCKED and thread.token == token:
                self.sched.wake(thread, RESTART)

    # -- groups and sessions ----------------------------------------------------------------
    def setpgid(self, caller: Process, pid: int, pgid: int) -> int:
        with self.sched.cond:
            target = caller if pid == 0 else self.processes.get(pid)
            if target is None or target.exit_status is not None:
                return -ESRCH
            if target is not caller and target not in caller.children:
                return -ESRCH
            if pgid < 0:
                return -EINVAL
            pgid = pgid or target.pid
            if target.sid == target.pid:
                return -EPERM                   # a session leader cannot move
            if pgid != target.pid and not any(
                    p.pgid == pgid and p.sid == target.sid for p in self.processes.values()):
                return -EPERM
            target.pgid = pgid
            return 0

    def setsid(self, caller: Process) -> int:
        with self.sched.cond:
            if any(p.pgid == caller.pid for p in self.processes.values() if p is not caller):
                return -EPERM
            if caller.pgid == caller.pid:
                return -EPERM
            caller.sid = caller.pgid = caller.pid
            return caller.pid

    def lookup(self, pid: int) -> Process | None:
        """A live process by pid (zombies are not signalled)."""
        proc = self.processes.get(pid)
        return proc if proc is not None and proc.exit_status is None else None

    def group(self, pgid: int) -> list[Process]:
        with self.sched.cond:
            return [p for p in self.processes.values()
                    if p.pgid == pgid and p.exit_status is None]




def pack_siginfo_child(is64: bool, report: WaitReport) -> bytes:
    """waitid's siginfo_t for a child's report (SIGCHLD, its CLD_* code, pid and status)."""
    if is64:
        head = struct.pack("<iii4xiii", SIGCHLD, 0, report.code, report.child.pid, 0,
                           report.value)
    else:
        head = struct.pack("<iiiiii", SIGCHLD, 0, report.code, report.child.pid, 0,
                           report.value)
    return head.ljust(128, b"\0")


# -- saved states ----------------------------------------------------------------------------
def save_processes(table: ProcessTable, now: float, space_of: dict[int, int],
                   fds_of: dict[int, int]) -> dict[str, Any]:
    """Caller holds ``sched.cond`` (the partition is paused). The process tree as JSON-able
    data; ``space_of``/``fds_of`` map id(address space)/id(fd table) to their index in the
    state file. wait4 callers are turned into retries first (they park again on resume), so
    only vfork parents are recorded as waiting."""
    for pid in list(table._waiters):
        table._wake_waiters(pid)
    records = []
    for proc in sorted(table.processes.values(), key=lambda p: p.pid):
        live = proc.exit_status is None
        records.append({
            "pid": proc.pid, "ppid": proc.ppid, "pgid": proc.pgid, "sid": proc.sid,
            "cwd": proc.cwd, "umask": proc.umask, "exe": proc.exe, "argv": proc.argv,
            "gdt_free": proc.gdt_free, "exit_status": proc.exit_status,
            "children": [c.pid for c in proc.children],
            "age": now - proc.started,
            "space": space_of[id(proc.mem)] if live else None,
            "fds": fds_of[id(proc.fds)] if live else None,
            "signals": proc.signals.save(now) if live else {},
            "comm": proc.comm, "thread_comm": [[t, n] for t, n in proc.thread_comm.items()],
            "personality": proc.personality,
            "cpu": [proc.utime, proc.stime, proc.cutime, proc.cstime, proc.maxrss,
                    proc.cmaxrss],
        })
    vfork = [[child, thread.tid] for child, (thread, token) in table._vfork.items()
             if thread.state == BLOCKED and thread.token == token]
    return {"processes": records, "vfork": vfork, "space_uids": table._space_uids}


def restore_processes(table: ProcessTable, data: dict[str, Any], spaces: list[GuestMemory],
                      fd_tables: list[FdTable], placeholder: GuestMemory) -> None:
    """Rebuild the process tree (save_processes's data); zombies get ``placeholder`` as
    their (unused) address space. Signal state is restored by the caller once the
    processes exist (its timers need the machine)."""
    machine = table.machine
    procs: dict[int, Process] = {}
    now = time.monotonic()
    for rec in data["processes"]:
        pid = int(rec["pid"])
        if not 1 <= pid < PID_MAX or pid in procs:
            raise ValueError(f"process {pid} is not a valid pid or is listed twice")
        live = rec["exit_status"] is None
        space, fds = rec.get("space"), rec.get("fds")
        if live and not (isinstance(space, int) and 0 <= space < len(spaces) and
                         isinstance(fds, int) and 0 <= fds < len(fd_tables)):
            raise ValueError(f"process {pid} names an address space or fd table not saved")
        proc = Process(pid=pid, mem=spaces[space] if live else placeholder,
                       fds=fd_tables[fds] if live else FdTable(),
                       cwd=str(rec["cwd"]), umask=int(rec["umask"]) & 0o777,
                       exe=str(rec["exe"]), argv=[str(a) for a in rec["argv"]],
                       ppid=int(rec["ppid"]), pgid=int(rec["pgid"]), sid=int(rec["sid"]),
                       started=now - float(rec.get("age", 0.0)),
                       exit_status=None if live else int(rec["exit_status"]),
                       gdt_free=[int(s) for s in rec["gdt_free"]],
                       comm=str(rec.get("comm", ""))[:15],
                       personality=int(rec.get("personality", 0)) & 0xFFFFFFFF)
        proc.thread_comm = {int(t): str(n)[:15] for t, n in rec.get("thread_comm", [])}
        cpu = rec.get("cpu")               # absent from states saved before accounting
        if cpu is not None:
            proc.utime, proc.stime, proc.cutime, proc.cstime = (max(float(v), 0.0)
                                                                for v in cpu[:4])
            proc.maxrss, proc.cmaxrss = (max(int(v), 0) for v in cpu[4:6])
        procs[pid] = proc
    if 1 not in procs:
        raise ValueError("the saved state has no pid 1")
    for rec in data["processes"]:
        procs[int(rec["pid"])].children = [procs[int(c)] for c in rec["children"]
                                           if int(c) in procs]
    machine.processes = procs
    machine.init = procs[1]
    table._space_uids = int(data.get("space_uids", 0))


def restore_vfork_waits(table: ProcessTable, data: dict[str, Any],
                        threads: dict[int, GuestThread]) -> None:
    """Caller holds ``sched.cond``: vfork parents wait for their children again."""
    for child, tid in data.get("vfork", []):
        thread = threads.get(int(tid))
        if thread is not None and thread.state == BLOCKED:
            table._vfork[int(child)] = (thread, thread.token)
