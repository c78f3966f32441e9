"""Value types shared by the partition runtime and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["DEFAULT_DISK_BYTES", "DEFAULT_MAX_PROCESSES", "MAX_PROCESS_LIMIT", "PartitionSpec",
           "ExitStatus", "Console", "ImageError", "STOP_EXIT_CODE"]

#: The writable-layer quota when a partition names none (`--disk`).
DEFAULT_DISK_BYTES = 1 << 30
#: Processes a partition may hold at once when it names no limit (`--max-processes`);
#: MAX_PROCESS_LIMIT bounds what it may name (every process holds at least one thread of the
#: partition's 1024, zombies aside).
DEFAULT_MAX_PROCESSES = 512
MAX_PROCESS_LIMIT = 4096

#: Exit code reported when the partition was halted through ``Machine.stop()`` (128 + SIGTERM).
STOP_EXIT_CODE = 143


class ImageError(ValueError):
    """The image is not something the runtime can run (not a static x86_64/i386 ELF)."""


@dataclass(frozen=True)
class PartitionSpec:
    """What a partition runs and with which resources."""

    name: str
    root: Path
    entrypoint: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    vcpus: int = 1
    memory_bytes: int = 256 << 20
    upper: Path | None = None
    cwd: str = "/"
    disk_bytes: int = DEFAULT_DISK_BYTES  # ceiling of the writable layer (upper_quota.py)
    max_processes: int = DEFAULT_MAX_PROCESSES  # fork/clone past it: EAGAIN (proctable.py)

    def __post_init__(self) -> None:
        if not 1 <= self.vcpus <= 4:
            raise ValueError(f"vcpus must be 1..4, got {self.vcpus}")
        if not (1 << 20) <= self.memory_bytes <= (64 << 30):
            raise ValueError(f"memory_bytes must be 1 MiB..64 GiB, got {self.memory_bytes}")
        if isinstance(self.disk_bytes, bool) or not isinstance(self.disk_bytes, int) \
                or self.disk_bytes <= 0:
            raise ValueError(f"disk_bytes must be a positive integer, got {self.disk_bytes!r}")
        if isinstance(self.max_processes, bool) or not isinstance(self.max_processes, int) \
                or not 1 <= self.max_processes <= MAX_PROCESS_LIMIT:
            raise ValueError(f"max_processes must be 1..{MAX_PROCESS_LIMIT}, "
                             f"got {self.max_processes!r}")
        if not self.entrypoint.startswith("/"):
            raise ValueError(f"entrypoint must be an absolute guest path: {self.entrypoint!r}")


@dataclass
class ExitStatus:
    """How a partition ended: an exit code, or a reason it failed."""

    exit_code: int | None
    failed_reason: str | None
    unknown_syscalls: dict[int, int] = field(default_factory=dict)
    saved: bool = False     # True when the worker ended because its state was saved


class Console(Protocol):
    """The partition's console: guest stdout/stderr go out, stdin comes in."""

    def write(self, fd: int, data: bytes) -> None: ...

    def read_stdin(self, n: int) -> bytes: ...
