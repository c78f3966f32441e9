"""A guest process: its address space, descriptor table, working directory and umask.

A partition holds processes; each guest thread belongs to one. Syscall handlers reach the
calling thread's process through their Task (task.py), never through the machine, so that
everything a process owns is found in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .files import FdTable
from .memory import GuestMemory

__all__ = ["Process"]


@dataclass(eq=False)
class Process:
    """What the threads of one guest process share."""

    pid: int
    mem: GuestMemory
    fds: FdTable = field(default_factory=FdTable)
    cwd: str = "/"
    umask: int = 0o022
    exe: str = ""                      # guest path of the program it runs (/proc/self/exe)
