"""Runs one compatibility case twice, in a Machine and under the reference, and compares.

The reference runs in a copy of the case's root, chrooted, inside a private mount and pid
namespace (`unshare --mount --pid --fork`, with the namespace's /proc and the host's /dev
bind-mounted into the copy), so absolute guest paths, execve of /bin/... and /proc mean the
same thing on both sides. qemu-user is dynamically linked, so it is run through its own
ld.so from a staging directory bind-mounted at /.qemu-ref (which is therefore visible in the
reference root only; cases must not list "/"). The guest is pid 1 of the namespace, as a
partition's first process is pid 1 (node_agent/runtime/process.py). A case may declare
`reference="native"`: the program then runs directly on the host kernel in the same chroot.
A child that a guest execve()s runs natively under qemu-user too (qemu-user does not follow
execve).

Used by tests/compat/test_compat.py and bench/compat.py; needs root (chroot, mounts).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _extra in (REPO, REPO / "tests" / "unit" / "runtime"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

from compat_cases import ENV, Case  # noqa: E402
from runtime_helpers import BUSYBOX, make_root, run_machine  # noqa: E402

from node_agent.runtime.machine import Machine  # noqa: E402

PROGRAMS = HERE / "programs"
QEMU_MOUNT = "/.qemu-ref"
#: Where each binary kind lives in the guest root (and on the host, Debian packages).
BINARIES = {"busybox": "/bin/busybox", "bash": "/bin/bash-static", "zsh": "/bin/zsh-static",
            "sash": "/bin/sash"}
MOUNT_POINTS = ("proc", "dev", "tmp", QEMU_MOUNT.lstrip("/"))


class Unavailable(Exception):
    """A prerequisite is missing (gcc, qemu-user, a Debian package, root for the chroot)."""


@dataclass
class Outcome:
    """How one side ended: exit code (128+N for a signal), stdout, and a note on trouble."""

    code: int | None
    stdout: bytes
    stderr: bytes
    note: str = ""
    seconds: float = 0.0


@dataclass
class Result:
    """A case's verdict: identical, equal after declared normalisations, or different."""

    case: Case
    verdict: str            # "identical" | "declared" | "differs"
    here: Outcome
    reference: Outcome
    detail: str = ""


class ProgramBuilder:
    """Compiles tests/compat/programs/NAME.c (-static, -m32 for i386) once per builder."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.cache: dict[tuple[str, str], Path] = {}

    def __call__(self, name: str, arch: str) -> Path:
        key = (name, arch)
        if key not in self.cache:
            if shutil.which("gcc") is None:
                raise Unavailable("gcc is not installed")
            target = self.out / f"{name}-{arch}"
            cmd = ["gcc", "-static", "-O1", "-pthread", "-w", "-o", str(target),
                   str(PROGRAMS / f"{name}.c"), "-lm"]
            if arch == "i386":
                cmd.insert(1, "-m32")
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise Unavailable(f"cannot build {name} for {arch}: {done.stderr[-400:]}")
            self.cache[key] = target
        return self.cache[key]


def _applets() -> list[str]:
    done = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    return [a for a in done.stdout.split() if a and "/" not in a and a != "busybox"]


_APPLETS: list[str] = []


def prepare_root(tmp: Path, case: Case, build: ProgramBuilder) -> tuple[Path, str]:
    """The case's root (busybox + applet links in /bin, its binary, its files) and entrypoint."""
    if not BUSYBOX.exists():
        raise Unavailable("busybox-static is not installed")
    if case.binary.startswith("c:"):
        name = case.binary[2:]
        entry = f"/bin/{name}"
        binary = build(name, case.arch)
    else:
        entry = BINARIES[case.binary]
        binary = Path(entry)
        if not binary.exists():
            raise Unavailable(f"{entry} is missing (Debian package for {case.binary})")
    files = {k.lstrip("/"): v for k, v in case.files.items()}
    root = make_root(tmp, binary, entry, files)
    if entry != "/bin/busybox":
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
    if not _APPLETS:
        _APPLETS.extend(_applets())
    for applet in _APPLETS:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    for d in ("proc", "dev", "tmp", "etc"):
        (root / d).mkdir(exist_ok=True)
    return root, entry


def run_here(root: Path, entry: str, case: Case) -> Outcome:
    """The case in a Machine; stopped (note "timeout") after case.timeout seconds."""
    timers: list[threading.Timer] = []

    def control(machine: Machine) -> None:
        timer = threading.Timer(case.timeout, machine.stop)
        timer.daemon = True
        timers.append(timer)
        timer.start()

    t0 = time.monotonic()
    run = run_machine(root, entry, case.argv, env=ENV, stdin=case.stdin, control=control,
                      memory=case.memory)
    seconds = time.monotonic() - t0
    for timer in timers:
        timer.cancel()
    note = ""
    if seconds >= case.timeout:
        note = f"timeout after {case.timeout:g}s"
    elif run.status.failed_reason is not None:
        note = f"failed: {run.status.failed_reason}"
    if run.status.unknown_syscalls:
        note += f" unknown syscalls {sorted(run.status.unknown_syscalls)}"
    return Outcome(run.status.exit_code, run.stdout, run.stderr, note.strip(), seconds)


class Reference:
    """Runs cases chrooted under qemu-user (through a staged copy of it) or natively."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self._ready = False

    def _prepare(self) -> None:
        if self._ready:
            return
        if os.geteuid() != 0:
            raise Unavailable("the reference needs root (chroot and bind mounts)")
        for tool in ("unshare", "chroot", "mount", "qemu-x86_64", "qemu-i386"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} is not installed")
        self.stage.mkdir(parents=True, exist_ok=True)
        for exe in ("qemu-x86_64", "qemu-i386"):
            path = Path(shutil.which(exe) or exe)
            shutil.copy(path, self.stage / exe)
            ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True)
            for lib in re.findall(r"(/\S+\.so[.\d]*)", ldd.stdout):
                dest = self.stage / Path(lib).name
                if not dest.exists():
                    shutil.copy(lib, dest)
        loaders = list(self.stage.glob("ld-linux*.so*"))
        if not loaders:
            raise Unavailable("cannot find qemu-user's dynamic loader")
        self.loader = loaders[0].name
        self.chroot = shutil.which("chroot") or "chroot"
        self._ready = True

    def run(self, root: Path, entry: str, case: Case) -> Outcome:
        self._prepare()
        work = root.parent / "reference-root"
        shutil.copytree(root, work, symlinks=True)
        (work / QEMU_MOUNT.lstrip("/")).mkdir()
        if case.reference == "native":
            command = [entry, *case.argv]
        else:
            qemu = "qemu-x86_64" if case.arch == "x86_64" else "qemu-i386"
            command = [f"{QEMU_MOUNT}/{self.loader}", "--library-path", QEMU_MOUNT,
                       f"{QEMU_MOUNT}/{qemu}", entry, *case.argv]
        # The guest is pid 1 of its pid namespace, as a partition's first process is (so
        # signals it gets without a handler are dropped, as for any container's init).
        script = ('set -e; r="$1"; shift; mount --bind /proc "$r/proc"; '
                  'mount --bind /dev "$r/dev"; mount --bind "$STAGE" "$r/.qemu-ref"; '
                  'umask 022; exec env -i "$@"')
        env_args = [f"{k}={v}" for k, v in ENV]
        argv = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                "sh", "-c", script, "sh", str(work), *env_args, self.chroot, str(work), *command]
        t0 = time.monotonic()
        try:
            done = subprocess.run(argv, input=case.stdin, capture_output=True,
                                  timeout=case.timeout, env={"STAGE": str(self.stage),
                                                             "PATH": os.environ["PATH"]},
                                  preexec_fn=_default_signals)
        except subprocess.TimeoutExpired as exc:
            return Outcome(None, exc.stdout or b"", exc.stderr or b"",
                           f"timeout after {case.timeout:g}s", time.monotonic() - t0)
        code = done.returncode if done.returncode >= 0 else 128 - done.returncode
        return Outcome(code, done.stdout, done.stderr, "", time.monotonic() - t0)


def _default_signals() -> None:
    """In the reference's child, before exec: every signal at its default action and none
    blocked, as a partition's pid 1 starts. Otherwise the reference inherits whatever the
    test run was started with (a background job of a non-interactive shell ignores SIGINT
    and SIGQUIT, nohup SIGHUP), and traps and /proc/self/status differ for no reason."""
    for sig in range(1, signal.NSIG):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass                                   # SIGKILL, SIGSTOP, glibc's own
    # glibc refuses to touch its own 32 and 33 (SIGCANCEL, SIGSETXID): the kernel's
    # rt_sigaction does not (struct kernel_sigaction: handler, flags, restorer, mask).
    libc = ctypes.CDLL(None, use_errno=True)
    default = ctypes.create_string_buffer(32)      # SIG_DFL, no flags, no mask
    for sig in (32, 33):
        libc.syscall(13, sig, default, None, 8)    # x86_64 rt_sigaction (the runner is x86_64)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def normalise(case: Case, data: bytes) -> bytes:
    """Apply the case's declared differences (regex replacements) in order."""
    for diff in case.diffs:
        data = re.sub(diff.pattern.encode(), diff.replacement.encode(), data, flags=re.M)
    return data


def compare(case: Case, here: Outcome, ref: Outcome) -> Result:
    if ref.note:
        return Result(case, "differs", here, ref, f"reference: {ref.note}")
    if here.code == ref.code and here.stdout == ref.stdout:
        return Result(case, "identical", here, ref)
    same_code = here.code == ref.code
    same_out = normalise(case, here.stdout) == normalise(case, ref.stdout)
    if same_code and same_out:
        return Result(case, "declared", here, ref)
    parts = []
    if here.note:
        parts.append(here.note)
    if not same_code:
        parts.append(f"exit {here.code} here, {ref.code} in the reference")
    if not same_out:
        parts.append(f"stdout here {normalise(case, here.stdout)[:300]!r} vs reference "
                     f"{normalise(case, ref.stdout)[:300]!r}")
    if here.stderr:
        parts.append(f"stderr here {here.stderr[-200:]!r}")
    return Result(case, "differs", here, ref, "; ".join(parts))


def run_case(case: Case, tmp: Path, build: ProgramBuilder, reference: Reference) -> Result:
    """Build the root in ``tmp`` (empty), run both sides, compare."""
    root, entry = prepare_root(tmp, case, build)
    ref = reference.run(root, entry, case)
    here = run_here(root, entry, case)
    return compare(case, here, ref)
