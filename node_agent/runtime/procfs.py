"""/proc for the guest: generated from the partition's own state, never the host's /proc.

Every path under /proc is answered here (the sandbox's walk asks ``kind`` for each name
under /proc instead of looking at either layer): directories are listed from the process
table, files are generated whole when opened (a ProcFile: read-only, seekable) and links
carry guest paths only (``/proc/self`` -> ``<pid>``, ``exe``/``cwd``/``fd/N`` -> the guest
path the process knows; ``root`` -> ``/``), which the sandbox then walks inside the
partition like any symlink, so nothing here can name a host file.

Values are the partition's: MemTotal is its memory size; MemFree is what remains after the
pages its processes have touched (resident pages of their guest mappings, read from
/proc/self/pagemap over their allocated ranges only); CPU times are the worker's host CPU
time (mostly vCPU emulation) spread over the vCPUs; uptime runs from the partition's start.
"""

from __future__ import annotations

import os
import resource
import stat
import threading
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import accounting
from .files import DirFile, FdTable, HostFile, OpenFile, PipeEnd, StatInfo
from .signals import SIG_DFL, SIG_IGN, bit
from .vmas import PROT_R, PROT_W, PROT_X, Region, vmas_of

if TYPE_CHECKING:
    from .fs import Sandbox
    from .machine import Machine
    from .memory import GuestMemory
    from .process import Process

__all__ = ["ProcFs", "ProcFile", "ProcDir", "under_proc", "resident_bytes", "cpu_seconds",
           "thread_comm", "exec_comm", "OSRELEASE", "OSTYPE"]

OSTYPE, OSRELEASE = "Linux", "6.1.0-viridian"
HZ = 100
PF_EXITING, PF_RANDOMIZE = 0x4, 0x400000
PAGE = 4096
_PID_FILES = ("stat", "status", "cmdline", "environ", "maps", "comm", "statm", "mounts")
_PID_LINKS = ("exe", "cwd", "root")
_TOP_FILES = ("meminfo", "cpuinfo", "mounts", "uptime", "loadavg", "stat", "filesystems",
              "version")
_SYS_KERNEL = ("hostname", "ostype", "osrelease")
_CPU_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 "
              "clflush mmx fxsr sse sse2 ht syscall nx lm constant_tsc nopl pni ssse3 cx16 "
              "sse4_1 sse4_2 movbe popcnt aes xsave rdrand hypervisor lahf_lm abm")


def under_proc(gpath: str) -> bool:
    return gpath == "/proc" or gpath.startswith("/proc/")


class ProcFile(OpenFile):
    """An open /proc file: its content as generated at open time."""

    seekable = True

    def __init__(self, flags: int, gpath: str, data: bytes, info: StatInfo) -> None:
        super().__init__(flags, gpath)
        self.data = data
        self.pos = 0
        self.info = info

    def read(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + max(n, 0)]
        self.pos += len(out)
        return out

    def pread(self, n: int, offset: int) -> bytes:
        if offset < 0:
            raise OSError(22, "invalid argument")
        return self.data[offset:offset + max(n, 0)]

    def seek(self, offset: int, whence: int) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.data)}.get(whence)
        if base is None or base + offset < 0:
            raise OSError(22, "invalid argument")
        self.pos = base + offset
        return self.pos

    def stat(self) -> StatInfo:
        return self.info


class ProcDir(DirFile):
    """An open /proc directory: listed again whenever it is read from its start, so that
    /proc/<pid>/fd shows the descriptor table as it is at getdents time (including the
    descriptor that holds this directory), as Linux's readdir does."""

    def __init__(self, flags: int, gpath: str, procfs: ProcFs, info: StatInfo) -> None:
        super().__init__(flags, gpath, procfs.listing(gpath), info)
        self.procfs = procfs

    def refresh(self) -> None:
        if self.pos == 0 and self.procfs.kind(self.gpath) == "dir":
            self.entries = [*self.entries[:2], *self.procfs.listing(self.gpath)]


@dataclass(frozen=True)
class _Ref:
    """A parsed /proc path: which process (and thread), and the rest of the path."""

    pid: int | None
    tid: int | None
    rest: tuple[str, ...]


def cpu_seconds(kind: int = resource.RUSAGE_SELF) -> tuple[float, float]:
    """(user, system) host CPU seconds of this worker (or of the calling host thread)."""
    ru = resource.getrusage(kind)
    return ru.ru_utime, ru.ru_stime


#: the top bytes of pagemap entries with "present" or "swapped" set (bits 63, 62)
_PRESENT = bytes(range(0x40, 0x100))


def resident_bytes(mem: GuestMemory) -> int:
    """Bytes of ``mem`` the guest has touched: present pages of the image, heap, mmap
    allocations and stack, read from this process's pagemap (allocated ranges only)."""
    ranges = [(mem.base, max(mem.brk, mem.image_end)), (mem.stack_low, mem.stack_top)]
    ranges += _allocs(mem)
    pages = 0
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return sum(hi - lo for lo, hi in ranges)
    try:
        for lo, hi in ranges:
            first = (mem.host + lo - mem.base) // PAGE
            n = (hi - lo) // PAGE
            for start in range(0, n, 1 << 16):
                count = min(1 << 16, n - start)
                high = os.pread(fd, count * 8, (first + start) * 8)[7::8]
                pages += len(high) - len(high.translate(None, _PRESENT))
    except OSError:
        return sum(hi - lo for lo, hi in ranges)
    finally:
        os.close(fd)
    return pages * PAGE


def _allocs(mem: GuestMemory) -> list[tuple[int, int]]:
    """The mmap allocations of ``mem`` (a consistent copy)."""
    with mem.lock:
        return list(zip(mem._starts, mem._ends, strict=True))


def _mapped_bytes(mem: GuestMemory) -> int:
    heap = max(mem.brk, mem.image_end) - mem.base
    return heap + (mem.stack_top - mem.stack_low) + sum(
        hi - lo for lo, hi in _allocs(mem))


def _ino(gpath: str) -> int:
    return 0x10000 + zlib.crc32(gpath.encode("utf-8", "surrogateescape"))


class ProcFs:
    """The /proc tree of one partition. ``kernel`` is the Machine (set by the syscall layer
    on first use); the calling process and thread are per host thread (``caller``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.kernel: Machine | None = None
        self._local = threading.local()

    def caller(self, pid: int, tid: int) -> None:
        """The guest process and thread whose syscall this host thread is serving."""
        self._local.pid, self._local.tid = pid, tid

    def _self(self) -> tuple[int, int]:
        pid = getattr(self._local, "pid", 1)
        return pid, getattr(self._local, "tid", pid)

    # -- the process table -------------------------------------------------------------
    def _processes(self) -> dict[int, Process]:
        kernel = self.kernel
        if kernel is None:      # before the first syscall (the loader): only /proc/1/exe
            return {1: _Boot(self.sandbox.exe)}  # type: ignore[dict-item]
        return dict(kernel.processes)

    def _threads(self, pid: int) -> list[Any]:
        kernel = self.kernel
        if kernel is None:
            return []
        with kernel.sched.cond:
            return sorted((t for t in kernel.sched.threads.values()
                           if t.process.pid == pid and t.state != "dead"),
                          key=lambda t: int(t.tid))

    def _parse(self, gpath: str) -> _Ref | None:
        parts = tuple(p for p in gpath.split("/") if p)[1:]
        if not parts or not parts[0].isdigit() or len(parts[0]) > 9:
            return _Ref(None, None, parts)
        pid = int(parts[0])
        if pid not in self._processes():
            return None
        rest = parts[1:]
        if len(rest) >= 2 and rest[0] == "task":
            if not rest[1].isdigit() or len(rest[1]) > 9:
                return None
            tid = int(rest[1])
            if tid not in [int(t.tid) for t in self._threads(pid)] and tid != pid:
                return None
            return _Ref(pid, tid, rest[2:])
        return _Ref(pid, None, rest)

    # -- the tree ----------------------------------------------------------------------
    def kind(self, gpath: str) -> str | None:
        """"dir", "link", "proc" (a file) or None (no such entry)."""
        if gpath == "/proc":
            return "dir"
        ref = self._parse(gpath)
        if ref is None:
            return None
        rest = ref.rest
        if ref.pid is None:
            if rest in (("self",), ("thread-self",)):
                return "link"
            if len(rest) == 1 and rest[0] in _TOP_FILES:
                return "proc"
            if rest in (("sys",), ("sys", "kernel")):
                return "dir"
            if len(rest) == 3 and rest[:2] == ("sys", "kernel") and rest[2] in _SYS_KERNEL:
                return "proc"
            return None
        if not rest:
            return "dir"
        if len(rest) == 1:
            if rest[0] in _PID_FILES:
                return "proc"
            if rest[0] in _PID_LINKS:
                return "link"
            if rest[0] == "fd" or (rest[0] == "task" and ref.tid is None):
                return "dir"
            return None
        if len(rest) == 2 and rest[0] == "fd" and rest[1].isdigit() and len(rest[1]) < 8:
            proc = self._processes()[ref.pid]
            return "link" if int(rest[1]) in proc.fds.files else None
        return None

    def listing(self, gpath: str) -> list[tuple[str, int, int]]:
        ref = self._parse(gpath)
        if gpath == "/proc" or (ref is not None and ref.pid is None and not ref.rest):
            names = [(str(pid), 4) for pid in sorted(self._processes())]
            names += [("self", 10), ("thread-self", 10), ("sys", 4)]
            names += [(name, 8) for name in _TOP_FILES]
        elif ref is None:
            names = []
        elif ref.pid is None:
            names = [("kernel", 4)] if ref.rest == ("sys",) else \
                [(name, 8) for name in _SYS_KERNEL]
        elif ref.rest == ("fd",):
            names = [(str(fd), 10) for fd in sorted(self._processes()[ref.pid].fds.files)]
        elif ref.rest == ("task",):
            names = [(str(t.tid), 4) for t in self._threads(ref.pid)] or [(str(ref.pid), 4)]
        else:
            names = [(name, 8) for name in _PID_FILES] + [(name, 10) for name in _PID_LINKS]
            names += [("fd", 4)] + ([("task", 4)] if ref.tid is None else [])
        return [(name, dtype, _ino(gpath + "/" + name)) for name, dtype in names]

    def info(self, gpath: str) -> StatInfo:
        kind = self.kind(gpath)
        mode = {"dir": stat.S_IFDIR | 0o555, "link": stat.S_IFLNK | 0o777}.get(
            kind or "", stat.S_IFREG | 0o444)
        ref = self._parse(gpath)
        started = time.time_ns()
        if ref is not None and ref.pid is not None:
            proc = self._processes()[ref.pid]
            started -= int((time.monotonic() - proc.started) * 1e9)
        info = StatInfo.synthetic(mode, ino=_ino(gpath))
        return StatInfo(dev=4, ino=info.ino, mode=mode, nlink=2 if kind == "dir" else 1,
                        uid=0, gid=0, rdev=0, size=0, blksize=1024, blocks=0,
                        atime_ns=started, mtime_ns=started, ctime_ns=started)

    def link(self, gpath: str) -> str:
        ref = self._parse(gpath)
        if ref is None:
            raise OSError(2, "no such process")
        pid, tid = self._self()
        if ref.pid is None:
            return str(pid) if ref.rest == ("self",) else f"{pid}/task/{tid}"
        proc = self._processes()[ref.pid]
        name = ref.rest[0]
        if name == "exe":
            return proc.exe or self.sandbox.exe
        if name == "cwd":
            return proc.cwd
        if name == "root":
            return "/"
        file = proc.fds.files.get(int(ref.rest[1]))
        if file is None:
            raise OSError(2, "no such descriptor")
        return _fd_text(file)

    # -- file contents -------------------------------------------------------------------
    def content(self, gpath: str) -> bytes:
        ref = self._parse(gpath)
        if ref is None or self.kernel is None:
            raise OSError(2, "no such process")
        if ref.pid is None:
            if ref.rest[:2] == ("sys", "kernel"):
                return self._sys_kernel(ref.rest[2]).encode() + b"\n"
            return getattr(self, "_" + ref.rest[0])()  # type: ignore[no-any-return]
        proc = self._processes()[ref.pid]
        name = ref.rest[0]
        if name == "cmdline":
            return b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in proc.argv)
        if name == "environ":
            return b""
        if name == "comm":
            return thread_comm(proc, ref.tid).encode("utf-8", "surrogateescape") + b"\n"
        if name == "mounts":
            return self._mounts()
        if name == "maps":
            return _maps(proc.mem, proc)
        if name == "statm":
            size = _mapped_bytes(proc.mem) // PAGE
            rss = resident_bytes(proc.mem) // PAGE
            text = (proc.mem.image_end - proc.mem.base) // PAGE
            return f"{size} {rss} 0 {text} 0 {size - text} 0\n".encode()
        if name == "status":
            return self._status(proc, ref.tid)
        return self._pid_stat(proc, ref.tid)

    def _sys_kernel(self, name: str) -> str:
        if name == "ostype":
            return OSTYPE
        if name == "osrelease":
            return OSRELEASE
        return self.kernel.spec.name[:64] if self.kernel is not None else "(none)"

    def _uptime_s(self) -> float:
        kernel = self.kernel
        return 0.0 if kernel is None else max(0.0, time.monotonic() - kernel.started)

    def _vcpus(self) -> int:
        return 1 if self.kernel is None else int(self.kernel.spec.vcpus)

    def _runnable(self) -> int:
        kernel = self.kernel
        if kernel is None:
            return 1
        with kernel.sched.cond:
            return sum(1 for t in kernel.sched.threads.values()
                       if t.state in ("running", "runnable"))

    def _memory(self) -> tuple[int, int]:
        """(total, touched) bytes: the partition's memory and its processes' resident pages."""
        kernel = self.kernel
        if kernel is None:
            return 0, 0
        seen: set[int] = set()
        used = 0
        for proc in self._processes().values():
            if id(proc.mem) not in seen:
                seen.add(id(proc.mem))
                used += resident_bytes(proc.mem)
        total = int(kernel.spec.memory_bytes)
        return total, min(used, total)

    def _meminfo(self) -> bytes:
        total, used = self._memory()
        kb = total // 1024
        free = (total - used) // 1024
        rows = [("MemTotal", kb), ("MemFree", free), ("MemAvailable", free), ("Buffers", 0),
                ("Cached", 0), ("SwapCached", 0), ("Active", used // 1024), ("Inactive", 0),
                ("Shmem", 0), ("SReclaimable", 0), ("SwapTotal", 0), ("SwapFree", 0),
                ("Mapped", used // 1024)]
        return "".join(f"{name + ':':<16}{value:>8} kB\n" for name, value in rows).encode()

    def _cpuinfo(self) -> bytes:
        out = []
        for i in range(self._vcpus()):
            out.append(f"processor\t: {i}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
                       f"model\t\t: 6\nmodel name\t: Viridian vCPU (Unicorn)\nstepping\t: 3\n"
                       f"cpu MHz\t\t: 1000.000\ncache size\t: 4096 KB\nphysical id\t: 0\n"
                       f"siblings\t: {self._vcpus()}\ncore id\t\t: {i}\n"
                       f"cpu cores\t: {self._vcpus()}\napicid\t\t: {i}\nfpu\t\t: yes\n"
                       f"fpu_exception\t: yes\ncpuid level\t: 13\nwp\t\t: yes\n"
                       f"flags\t\t: {_CPU_FLAGS}\nbogomips\t: 2000.00\n"
                       f"clflush size\t: 64\ncache_alignment\t: 64\n"
                       f"address sizes\t: 40 bits physical, 48 bits virtual\n\n")
        return "".join(out).encode()

    def _mounts(self) -> bytes:
        return (b"overlay / overlay rw,relatime 0 0\n"
                b"proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n")

    def _uptime(self) -> bytes:
        up = self._uptime_s()
        idle = max(0.0, up * self._vcpus() - sum(cpu_seconds()))
        return f"{up:.2f} {idle:.2f}\n".encode()

    def _loadavg(self) -> bytes:
        run = self._runnable()
        total = sum(len(self._threads(pid)) for pid in self._processes())
        last = max([1, *self._processes()])
        return f"{run:.2f} {run:.2f} {run:.2f} {run}/{max(total, 1)} {last}\n".encode()

    def _stat(self) -> bytes:
        vcpus = self._vcpus()
        up = self._uptime_s()
        user, system = cpu_seconds()
        idle = max(0.0, up * vcpus - user - system)

        def line(name: str, share: float) -> str:
            return (f"{name} {int(user * HZ * share)} 0 {int(system * HZ * share)} "
                    f"{int(idle * HZ * share)} 0 0 0 0 0 0\n")

        out = line("cpu ", 1.0) + "".join(line(f"cpu{i}", 1 / vcpus) for i in range(vcpus))
        boot = int(time.time() - up)
        out += (f"intr 0\nctxt 0\nbtime {boot}\nprocesses {max([1, *self._processes()])}\n"
                f"procs_running {self._runnable()}\nprocs_blocked 0\nsoftirq 0\n")
        return out.encode()

    def _filesystems(self) -> bytes:
        return b"nodev\tproc\nnodev\toverlay\n"

    def _version(self) -> bytes:
        return f"{OSTYPE} version {OSRELEASE} (viridian) #1 SMP PREEMPT_DYNAMIC\n".encode()

    def _state(self, proc: Process, tid: int | None) -> tuple[str, int]:
        threads = self._threads(proc.pid)
        if tid is not None:
            threads = [t for t in threads if int(t.tid) == tid] or threads[:1]
        if getattr(proc, "exit_status", None) is not None:
            return "Z", 0
        signals = getattr(proc, "signals", None)
        if signals is not None and signals.stopped:
            return "T", max(len(threads), 1)
        running = any(t.state in ("running", "runnable") for t in threads)
        return ("R" if running else "S"), max(len(threads), 1)

    def _thread(self, proc: Process, tid: int | None) -> Any:
        """The guest thread ``tid`` of ``proc`` (its main thread for None), or None."""
        want = proc.pid if tid is None else tid
        threads = self._threads(proc.pid)
        return next((t for t in threads if int(t.tid) == want), threads[0] if threads else None)

    def _signals(self, proc: Process, tid: int | None) -> tuple[int, int, int, int]:
        """(pending, blocked, ignored, caught) signal masks, as /proc shows them."""
        thread = self._thread(proc, tid)
        sig = getattr(proc, "signals", None)
        pending = blocked = ignored = caught = 0
        if sig is not None:
            for n in list(sig.pending):
                pending |= bit(n)
            for n, action in enumerate(sig.actions[1:], start=1):
                if action.handler == SIG_IGN:
                    ignored |= bit(n)
                elif action.handler != SIG_DFL:
                    caught |= bit(n)
        if thread is not None:
            blocked = int(thread.sig.blocked)
            for n in list(thread.sig.pending):
                pending |= bit(n)
        return pending, blocked, ignored, caught

    def _pid_stat(self, proc: Process, tid: int | None) -> bytes:
        """The 52 fields of proc(5) /proc/<pid>/stat."""
        state, nthreads = self._state(proc, tid)
        mem = proc.mem
        kernel = self.kernel
        user, system = self._cpu_times(proc, tid)
        started = 0.0 if kernel is None else max(0.0, proc.started - kernel.started)
        zombie = state == "Z"
        layout = vmas_of(mem).layout
        pending, blocked, ignored, caught = self._signals(proc, tid)
        flags = PF_RANDOMIZE | (PF_EXITING if zombie else 0)

        def mm(name: str, fallback: int) -> int:
            return 0 if zombie else layout.get(name, fallback)

        fields = [
            tid or proc.pid, f"({thread_comm(proc, tid)})", state, proc.ppid, proc.pgid,
            proc.sid, 0, -1, flags,                             # tty_nr, tpgid, flags
            0, 0, 0, 0,                                         # minflt .. cmajflt
            int(user * HZ), int(system * HZ),                   # utime, stime
            int(getattr(proc, "cutime", 0.0) * HZ), int(getattr(proc, "cstime", 0.0) * HZ),
            20, 0,                                              # priority, nice
            nthreads, 0, int(started * HZ),                     # itrealvalue, starttime
            0 if zombie else _mapped_bytes(mem),
            0 if zombie else resident_bytes(mem) // PAGE, (1 << 64) - 1,
            mm("start_code", mem.base), mm("end_code", mem.image_end),
            mm("start_stack", mem.stack_top), 0, 0,             # kstkesp, kstkeip hidden
            pending & 0xFFFFFFFF, blocked & 0xFFFFFFFF, ignored & 0xFFFFFFFF,
            caught & 0xFFFFFFFF, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0,  # .. exit_signal .. cguest
            mm("start_data", mem.image_end), mm("end_data", mem.image_end),
            0 if zombie else mem.brk_start, mm("arg_start", 0), mm("arg_end", 0),
            mm("env_start", 0), mm("env_end", 0),
            proc.exit_status if zombie and proc.exit_status is not None else 0]
        text = " ".join(str(f) for f in fields) + "\n"
        return text.encode("utf-8", "surrogateescape")

    def _cpu_times(self, proc: Process, tid: int | None) -> tuple[float, float]:
        """(user, system) seconds of ``proc``'s threads, or of its thread ``tid``."""
        kernel = self.kernel
        if kernel is None or not hasattr(proc, "utime"):
            return 0.0, 0.0
        if tid is not None:
            thread = self._thread(proc, tid)
            if thread is not None and int(thread.tid) == tid:
                return accounting.thread_times(kernel, thread)
        return accounting.process_times(kernel, proc)

    def _status(self, proc: Process, tid: int | None) -> bytes:
        state, nthreads = self._state(proc, tid)
        names = {"R": "R (running)", "S": "S (sleeping)", "Z": "Z (zombie)",
                 "T": "T (stopped)"}
        vm = _mapped_bytes(proc.mem) // 1024
        rss = resident_bytes(proc.mem) // 1024
        pending, blocked, ignored, caught = self._signals(proc, tid)
        rows = [("Name", thread_comm(proc, tid)), ("Umask", f"{proc.umask:04o}"),
                ("State", names[state]), ("Tgid", proc.pid), ("Ngid", 0),
                ("Pid", tid or proc.pid), ("PPid", proc.ppid), ("TracerPid", 0),
                ("Uid", "0\t0\t0\t0"), ("Gid", "0\t0\t0\t0"), ("FDSize", 1024),
                ("Groups", ""), ("VmPeak", f"{vm} kB"), ("VmSize", f"{vm} kB"),
                ("VmHWM", f"{rss} kB"), ("VmRSS", f"{rss} kB"), ("Threads", nthreads),
                ("SigQ", "0/0"), ("SigPnd", f"{pending:016x}"), ("ShdPnd", "0" * 16),
                ("SigBlk", f"{blocked:016x}"), ("SigIgn", f"{ignored:016x}"),
                ("SigCgt", f"{caught:016x}"),
                ("Cpus_allowed_list", f"0-{self._vcpus() - 1}")]
        return "".join(f"{k}:\t{v}\n" for k, v in rows).encode("utf-8", "surrogateescape")


class _Boot:
    """pid 1 as /proc shows it before the partition has a process table."""

    def __init__(self, exe: str) -> None:
        self.pid, self.exe, self.cwd, self.argv = 1, exe, "/", [exe]
        self.fds = FdTable()
        self.comm, self.thread_comm = "", dict[int, str]()


def thread_comm(proc: Process, tid: int | None = None) -> str:
    """The name /proc shows for ``proc`` (or its thread ``tid``): what PR_SET_NAME or the
    last execve set, else the basename of its first argument."""
    if tid is not None and tid in proc.thread_comm:
        return proc.thread_comm[tid]
    if proc.comm:
        return proc.comm
    return exec_comm((proc.argv[0] if proc.argv else proc.exe) or "init")


def exec_comm(path: str) -> str:
    """The name execve gives a process: the executed path's last component, 15 bytes."""
    raw = path.rstrip("/").rsplit("/", 1)[-1].encode("utf-8", "surrogateescape")[:15]
    return raw.decode("utf-8", "surrogateescape")


def _fd_text(file: OpenFile) -> str:
    if isinstance(file, PipeEnd):
        return f"pipe:[{id(file.buf) & 0xFFFFFF}]"
    if isinstance(file, (HostFile, DirFile, ProcFile)) or file.gpath.startswith("/"):
        if file.gpath.startswith("/dev/console"):
            return "/dev/console"
        return file.gpath
    kind = type(file).__name__.lower()
    if "socket" in kind:
        return f"socket:[{id(file) & 0xFFFFFF}]"
    return f"anon_inode:[{kind}]"


def _maps(mem: GuestMemory, proc: Process | None = None) -> bytes:
    """/proc/<pid>/maps: the image as its ELF segments (exe path and file offset), the
    heap, the mmap area as the guest mapped it (file, offset, permissions; what vmas.py
    does not know is anonymous rw-p), the stack."""
    vm = vmas_of(mem)
    rows: list[tuple[Region, str]] = []
    image = vm.within(mem.base, mem.image_end)
    if image:
        rows += [(r, r.path) for r in image]
    else:
        for lo, hi, bits in mem.image_perms or [(mem.base, mem.image_end, 5)]:
            prot = (PROT_R if bits & 1 else 0) | (PROT_W if bits & 2 else 0) | \
                (PROT_X if bits & 4 else 0)
            rows.append((Region(lo, hi, prot), ""))
    heap_hi = (mem.brk + PAGE - 1) & ~(PAGE - 1)
    if heap_hi > mem.brk_start:
        rows.append((Region(mem.brk_start, heap_hi, PROT_R | PROT_W), "[heap]"))
    for lo, hi in _allocs(mem):
        cursor = lo
        for r in vm.within(lo, hi):
            if r.lo > cursor:
                rows.append((Region(cursor, r.lo, PROT_R | PROT_W), ""))
            rows.append((r, r.path))
            cursor = r.hi
        if hi > cursor:
            rows.append((Region(cursor, hi, PROT_R | PROT_W), ""))
    rows.append((Region(mem.stack_low, mem.stack_top, PROT_R | PROT_W), "[stack]"))
    out = []
    for r, label in rows:
        if r.hi <= r.lo:
            continue
        head = (f"{r.lo:08x}-{r.hi:08x} {r.perms()} {r.offset:08x} "
                f"{(r.dev >> 8) & 0xFFF:02x}:{r.dev & 0xFF:02x} {r.ino}")
        out.append((f"{head:<72} {label}" if label else head) + "\n")
    return "".join(out).encode("utf-8", "surrogateescape")
