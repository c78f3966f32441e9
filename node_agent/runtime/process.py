"""A guest process: its address space, descriptor table, working directory and umask.

A partition holds processes (``Machine.processes``, by pid); each guest thread belongs to
one. Syscall handlers reach the calling thread's process through their Task (task.py),
never through the machine, so that everything a process owns is found in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .files import FdTable
from .memory import GuestMemory
from .signals import SignalActions

__all__ = ["Process"]


@dataclass(eq=False)
class Process:
    """What the threads of one guest process share, and its place in the process tree."""

    pid: int
    mem: GuestMemory
    fds: FdTable = field(default_factory=FdTable)
    cwd: str = "/"
    umask: int = 0o022
    exe: str = ""                      # guest path of the program it runs (/proc/self/exe)
    argv: list[str] = field(default_factory=list)
    ppid: int = 0
    pgid: int = 1
    sid: int = 1
    started: float = field(default_factory=time.monotonic)
    exit_status: int | None = None     # wait status once it is a zombie
    ended: float | None = None
    children: list[Process] = field(default_factory=list)
    #: i386 (and the x86_64 main thread): free per-thread GDT slots in this address space
    gdt_free: list[int] = field(default_factory=list)
    #: signal actions, the process-wide pending set and timers (signals.py)
    signals: SignalActions = field(default_factory=SignalActions)
    #: its name (/proc comm, PR_SET_NAME): the executed file's name; "" until set
    comm: str = ""
    #: names other threads gave themselves with PR_SET_NAME (tid -> name)
    thread_comm: dict[int, str] = field(default_factory=dict)
    #: personality(2): the execution domain and its flags (inherited across fork)
    personality: int = 0
    #: CPU seconds its threads used (user, system) and its reaped children's (accounting.py)
    utime: float = 0.0
    stime: float = 0.0
    cutime: float = 0.0
    cstime: float = 0.0
    #: peak resident size seen (KiB), and the largest of its reaped descendants'
    maxrss: int = 0
    cmaxrss: int = 0

    @property
    def is64(self) -> bool:
        """An x86_64 process (else i386): its address space says, and execve may change it."""
        return self.mem.bits == 64

    @property
    def arch(self) -> str:
        return "x86_64" if self.mem.bits == 64 else "i386"
