"""Guest threads that swap symlinks to host paths over files never redirect a call to the host.

tests/guests/race_paths.c keeps renaming symlinks whose text is a host path (absolute, relative
to the upper layer's directory, and a long ``../`` climb) over regular files and directories,
while other threads call every path-taking syscall in a loop. A runtime that resolves a guest
path and then acts on a host path loses this race within a fraction of a second; afterwards the
canary file outside the partition root must be exactly as it was and nothing may appear next
to it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, make_root, run_machine

CANARY_TEXT = b"canary: the host's own file\n"
RUN_MS = 2000


@dataclass(frozen=True)
class Seen:
    """What the host knows about a file: everything a write, chmod, utime or link changes."""

    data: bytes
    size: int
    mode: int
    mtime_ns: int
    nlink: int
    ino: int

    @classmethod
    def of(cls, path: Path) -> Seen:
        st = os.lstat(path)
        return cls(path.read_bytes(), st.st_size, st.st_mode, st.st_mtime_ns, st.st_nlink,
                   st.st_ino)


class Watcher:
    """Polls the canary while the guest runs and records when it first changed (diagnostics)."""

    def __init__(self, canary: Path, outside: Path, before: Seen) -> None:
        self.canary, self.outside, self.before = canary, outside, before
        self.changed_after: float | None = None
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            try:
                same = Seen.of(self.canary) == self.before and \
                    os.listdir(self.outside) == ["canary"]
            except OSError:
                same = False
            if not same:
                self.changed_after = time.monotonic() - self.t0
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("vcpus", [2, 4])
@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_symlink_swaps_never_reach_the_host(guest: GuestBuilder, tmp_path: Path,
                                            arch: str, vcpus: int) -> None:
    base = tmp_path / "case"
    base.mkdir()
    root = make_root(base, guest("race_paths", arch), "/bin/race_paths")
    upper, outside = base / "upper", base / "outside"
    upper.mkdir()
    outside.mkdir()
    canary = outside / "canary"
    canary.write_bytes(CANARY_TEXT)
    os.chmod(canary, 0o640)
    os.utime(canary, ns=(1_000_000_000, 1_000_000_000))
    before = Seen.of(canary)
    neighbours = sorted(os.listdir(base))
    work = upper / "w"          # where the guest's /w lives on the host
    args = (str(canary), os.path.relpath(canary, work), str(outside),
            os.path.relpath(outside, work), str(RUN_MS), str(vcpus), str(vcpus))
    watcher = Watcher(canary, outside, before)
    try:
        run = run_machine(root, "/bin/race_paths", args, upper=upper, vcpus=vcpus)
    finally:
        watcher.close()
    after = Seen.of(canary)
    when = "after the run" if watcher.changed_after is None else \
        f"{watcher.changed_after:.3f}s into the run"
    assert after == before, f"the canary outside the root changed ({when}): {after}"
    assert os.listdir(outside) == ["canary"], "a file was created outside the root"
    assert sorted(os.listdir(base)) == neighbours, "a file was created next to the root"
    assert watcher.changed_after is None
    # and the run was a real one: both sides ran, and every call reached the sandbox
    out = run.stdout.decode(errors="replace")
    assert run.status.exit_code == 0, (run.status, out, run.stderr[-400:])
    counts = dict(item.split("=") for item in out.split())
    assert int(counts["attacker_rounds"]) > 0 and int(counts["victim_rounds"]) > 0, out
    assert run.status.unknown_syscalls == {}, run.status.unknown_syscalls
