"""Processes inside a partition: fork, vfork, execve, wait, the process tree, the limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import BUSYBOX, GuestBuilder, Run, make_root, run_machine

from node_agent.runtime.machine import Machine
from node_agent.runtime.spec import DEFAULT_MAX_PROCESSES
from node_agent.runtime.vcpu import MAX_SPACES

ARCHES = ["x86_64", "i386"]


@pytest.mark.parametrize("arch", ARCHES)
def test_fork_wait_exec_vfork(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("proc_basic", arch=arch, vcpus=2, memory=128 << 20)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "parent pid=1",
        "child: pid!=1 1 ppid=1 counter=42",          # its own copy of the parent's memory
        "parent: reaped=1 exited=1 code=3 counter=41",  # the parent's copy is untouched
        "exec'd child argv=child x y ppid-is-parent=0",
        "exec child exited=1 code=7",
        "no children: -1",
        "vfork child code=5",
        "sum=190",
    ]
    assert run.status.unknown_syscalls == {}


@pytest.mark.parametrize("arch", ARCHES)
def test_process_tree_orphans_groups_waitid_exec_errors(run_guest: Callable[..., Run],
                                                         arch: str) -> None:
    run = run_guest("proc_tree", arch=arch, files={"data.txt": b"not a program\n"})
    assert run.status.exit_code == 0, run.status
    lines = run.stdout.decode().splitlines()
    assert lines[:5] == [
        "orphan adopted by 1",             # its parent ended: pid 1 adopts it...
        "reaped orphan: 1",                # ...and reaps it
        "pgid=1 sid=1",
        "setsid as group leader: -1 errno=1",   # EPERM
        "child setsid ok=1 pgid==pid=1 sid==pid=1",
    ]
    assert "waitid rc=0 signo=17 code=1 status=42 pid_ok=1" in lines
    assert "waitid no children rc=-1 errno=10" in lines      # ECHILD
    assert lines[-3:] == ["missing: -1 errno=2",              # ENOENT
                          "directory: -1 errno=13",           # EACCES
                          "not executable format: -1 errno=8"]  # ENOEXEC


@pytest.mark.parametrize("limit", [None, 40])
def test_fork_bomb_gets_eagain_and_the_partition_lives_on(run_guest: Callable[..., Run],
                                                          limit: int | None) -> None:
    """The partition's process limit (512 by default, else its spec's) counts pid 1: the
    bomb makes exactly limit - 1 children, then gets EAGAIN."""
    kwargs = {} if limit is None else {"max_processes": limit}
    run = run_guest("proc_tree", "bomb", vcpus=2, memory=256 << 20, **kwargs)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        f"bomb: made {(limit or DEFAULT_MAX_PROCESSES) - 1}, then EAGAIN=1",
        "bomb reaped all=1",
    ]
    assert DEFAULT_MAX_PROCESSES == 512


def test_exited_processes_release_their_memory_and_unicorn_instances(
        guest: GuestBuilder, tmp_path: Path) -> None:
    """200 children in turn: every address space is unmapped once its process is reaped,
    and no vCPU keeps more than MAX_SPACES Unicorn instances."""
    root = make_root(tmp_path, guest("proc_forkloop"), "/bin/forkloop")
    seen: dict[str, int] = {}

    def watch(machine: Machine) -> None:
        def sample() -> None:
            while not machine.sched.done:
                seen["max_spaces"] = max(seen.get("max_spaces", 0),
                                         *(len(v._spaces) for v in list(machine.vcpus)), 0)
                seen["max_processes"] = max(seen.get("max_processes", 0),
                                            len(machine.processes))
                time.sleep(0.002)
            seen["dead_left"] = len(machine._dead_mems)
        threading.Thread(target=sample, daemon=True).start()

    run = run_machine(root, "/bin/forkloop", ("200",), vcpus=2, control=watch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"done 200\n"
    assert 0 < seen["max_spaces"] <= MAX_SPACES
    assert seen["max_processes"] <= 3          # reaped as it goes: no zombies pile up


def test_fork_is_copy_on_write_and_the_memory_bound_counts_every_process(
        run_guest: Callable[..., Run]) -> None:
    """A parent that touched 40 of its 64 MiB forks (nothing is copied); a child that only
    reads shares its pages; a child that writes its 40 MiB copy takes the partition past
    its bound and is killed (SIGKILL), as by Linux's OOM killer in a memory cgroup."""
    run = run_guest("proc_memfork", "40", "0", memory=64 << 20)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == ["fork: ok", "child exited 0",
                                                "parent still sees 1"]
    run = run_guest("proc_memfork", "40", "1", memory=64 << 20)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == ["fork: ok", "child killed by signal 9",
                                                "parent still sees 1"]
    assert any(reason == "OutOfMemory" and "killed pid 2" in message
               for reason, message in run.events), run.events


def test_first_fork_of_a_large_process_copies_nothing() -> None:
    """256 MiB touched, then fork: the child shares every page until one side writes."""
    from node_agent.runtime.memory import GuestMemory

    mem = GuestMemory(0x400000, 0x500000, 512 << 20, 64)
    addr = mem.mmap(256 << 20)
    assert addr is not None
    off = addr - mem.base
    mem.view[off:off + (256 << 20)] = b"\x01" * (256 << 20)
    child = mem.clone()
    try:
        assert mem.private_bytes() == 0 and child.private_bytes() == 0
        assert mem.shared_key() == child.shared_key()
        assert child.view[off + (100 << 20)] == 1
        child.view[off] = 9                          # the child's write is its own
        mem.view[off + 4096] = 7                     # and the parent's its own
        assert (mem.view[off], child.view[off + 4096]) == (1, 1)
        assert child.private_bytes() == 4096 and mem.private_bytes() == 4096
        second = mem.clone()                         # copies what the parent wrote since
        assert (second.view[off], second.view[off + 4096]) == (1, 7)
        mem.zero(addr, 8192)                         # zeroing after a fork: fresh pages
        assert (mem.view[off], child.view[off], second.view[off + 4096]) == (0, 9, 7)
        second.close()
    finally:
        child.close()
        mem.close()


@pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")
@pytest.mark.parametrize("script, expected", [
    ("sash_like=1; echo x; exit 3", (b"x\n", 3)),
    ("echo a; /bin/echo b; /bin/echo c", (b"a\nb\nc\n", 0)),
    ("x=$(echo sub); echo \"got $x\"", (b"got sub\n", 0)),
    ("(echo in; exit 4); echo \"rc=$?\"", (b"in\nrc=4\n", 0)),
    ("/bin/true & wait $!; echo \"bg=$?\"", (b"bg=0\n", 0)),
    ("env FOO=bar /bin/sh -c 'echo $FOO'", (b"bar\n", 0)),
])
def test_busybox_shell_runs_commands_in_processes(tmp_path: Path, script: str,
                                                  expected: tuple[bytes, int]) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(BUSYBOX.read_bytes())
    for applet in ("sh", "echo", "true", "env"):
        (root / "bin" / applet).symlink_to("busybox")
    run = run_machine(root, "/bin/sh", ("-c", script), env=(("PATH", "/bin"),))
    assert (run.stdout, run.status.exit_code) == expected, (run.stderr, run.status)


@pytest.mark.parametrize("arch", ARCHES)
def test_fork_from_a_threaded_process_keeps_futexes_per_address_space(
        run_guest: Callable[..., Run], arch: str) -> None:
    """Parent threads hand a token around with a mutex and condition variable while the
    main thread forks children that do the same at the same addresses: no wake-up crosses
    from one process to another, and the parent's memory never sees the children's."""
    run = run_guest("proc_threads", arch=arch, vcpus=2)
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"children ok=4 parent token=4000\n"


@pytest.mark.parametrize("arch", ARCHES)
def test_another_threads_mprotect_is_in_force_at_once(run_guest: Callable[..., Run],
                                                      arch: str) -> None:
    """A thread running on one vCPU (no syscalls since it started) writes a page another
    thread made writable meanwhile on the other vCPU: the write succeeds, as on Linux. (glibc's
    fork locks every malloc arena, including one another thread just created with mmap and
    mprotect: the forking thread used to fault on it, now and then.)"""
    run = run_guest("perm_race", arch=arch, vcpus=2)
    assert (run.status.exit_code, run.status.failed_reason) == (0, None), run.status
    assert run.stdout == b"ok 42\n"
