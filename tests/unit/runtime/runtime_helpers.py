"""Helpers for runtime tests: building guests, making roots, running machines."""


from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node_agent.runtime.console import BufferConsole
from node_agent.runtime.machine import Machine
from node_agent.runtime.spec import DEFAULT_MAX_PROCESSES, ExitStatus, PartitionSpec

GUESTS = Path(__file__).resolve().parents[2] / "guests"
BUSYBOX = Path("/bin/busybox")


@dataclass
class Run:
    status: ExitStatus
    stdout: bytes
    stderr: bytes
    events: list[tuple[str, str]] = field(default_factory=list)


class GuestBuilder:
    """Compiles tests/guests/NAME.c with gcc -static (optionally -m32), caching per session."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.cache: dict[tuple[str, str], Path] = {}

    def __call__(self, name: str, arch: str = "x86_64") -> Path:
        key = (name, arch)
        if key not in self.cache:
            if shutil.which("gcc") is None:
                pytest.skip("gcc is not installed")
            target = self.out / f"{name}-{arch}"
            cmd = ["gcc", "-static", "-O2", "-pthread", "-w", "-o", str(target),
                   str(GUESTS / f"{name}.c"), "-lm"]
            if arch == "i386":
                cmd.insert(1, "-m32")
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot build {name} for {arch}: {result.stderr[-300:]}")
            self.cache[key] = target
        return self.cache[key]


def make_root(tmp: Path, binary: Path, guest_path: str,
              files: dict[str, bytes] | None = None) -> Path:
    """A guest root dir holding ``binary`` at ``guest_path`` plus ``files``."""
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    dest = root / guest_path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(binary, dest)
    for name, data in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def run_machine(root: Path, entrypoint: str, args: tuple[str, ...] = (), *,
                upper: Path | None = None, vcpus: int = 1, memory: int = 64 << 20,
                env: tuple[tuple[str, str], ...] = (), stdin: bytes = b"",
                cwd: str = "/", control: Callable[[Machine], None] | None = None,
                max_processes: int = DEFAULT_MAX_PROCESSES) -> Run:
    spec = PartitionSpec(name="test-part", root=root, entrypoint=entrypoint, args=args, env=env,
                         vcpus=vcpus, memory_bytes=memory, upper=upper, cwd=cwd,
                         max_processes=max_processes)
    console = BufferConsole(stdin)
    events: list[tuple[str, str]] = []
    machine = Machine(spec, console, lambda r, m: events.append((r, m)))
    if control is not None:
        control(machine)
    status = machine.run()
    return Run(status, bytes(console.stdout), bytes(console.stderr), events)
