"""Blocking I/O inside a partition: pipes, poll/select/epoll, eventfd, AF_UNIX, FIFOs, and
a save/restore in the middle of a pipe transfer. Guests: tests/guests/io_*.c, x86_64 and
i386; where the output does not depend on the host (fd limits, the network), the same
guest's output under qemu-user is the reference."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, Run, make_root

from node_agent.runtime.console import BufferConsole
from node_agent.runtime.files import FdTable, PipeBuffer, PipeEnd
from node_agent.runtime.machine import Machine
from node_agent.runtime.spec import ExitStatus, PartitionSpec

ARCHES = ["x86_64", "i386"]
DEADLINE = 60.0
GUEST = "io_blocking"


def _qemu(guest: GuestBuilder, tmp_path: Path, arch: str, *args: str) -> str:
    exe = "qemu-x86_64" if arch == "x86_64" else "qemu-i386"
    if shutil.which(exe) is None:
        pytest.skip(f"{exe} is not installed")
    work = tmp_path / "qemu"
    (work / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(guest(GUEST, arch), work / "bin" / GUEST)
    proc = subprocess.run([exe, f"./bin/{GUEST}", *args], cwd=work, capture_output=True,
                          timeout=DEADLINE)
    return proc.stdout.decode()


def _run(run_guest: Callable[..., Run], arch: str, case: str) -> str:
    run = run_guest(GUEST, case, arch=arch, vcpus=2)
    assert run.status.exit_code == 0, (run.status, run.stdout, run.stderr)
    return run.stdout.decode()


# Cases whose output is the same on any Linux host: compared with qemu-user.
SAME_AS_QEMU = ["sleepread", "fill", "atomic", "pollhup", "select", "epoll", "eventfd",
                "pairs"]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", SAME_AS_QEMU)
def test_matches_qemu(run_guest: Callable[..., Run], guest: GuestBuilder, tmp_path: Path,
                      arch: str, case: str) -> None:
    def comparable(out: str) -> list[str]:   # AF_INET: no network leaves a partition
        return [line for line in out.splitlines() if not line.startswith("inet ")]

    here = _run(run_guest, arch, case)
    assert comparable(here) == comparable(_qemu(guest, tmp_path, arch, case))


@pytest.mark.parametrize("arch", ARCHES)
def test_pipe_copy_of_1_mib_between_two_threads(run_guest: Callable[..., Run],
                                                guest: GuestBuilder, tmp_path: Path,
                                                arch: str) -> None:
    run = run_guest("io_pipe_copy", arch=arch, vcpus=2)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.startswith(b"got 1048576 sum ")
    exe = "qemu-x86_64" if arch == "x86_64" else "qemu-i386"
    if shutil.which(exe):
        ref = subprocess.run([exe, str(guest("io_pipe_copy", arch))], capture_output=True,
                             timeout=DEADLINE)
        assert run.stdout == ref.stdout


@pytest.mark.parametrize("arch", ARCHES)
def test_one_vcpu_also_copies(run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("io_pipe_copy", "300000", arch=arch, vcpus=1)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.startswith(b"got 300000 sum ")


@pytest.mark.parametrize("arch", ARCHES)
def test_poll_timeouts_and_readiness(run_guest: Callable[..., Run], arch: str) -> None:
    out = _run(run_guest, arch, "polltimeout")
    assert out == ("poll 0 revents 0 waited enough\n"      # clock_gettime in the guest
                   "ppoll 0 waited enough\n"
                   "poll0 0\n"
                   "poll ready 1 revents 0x1\n"
                   "write end 1 revents 0x4\n"
                   "bad fd 1 revents 0x20\n"
                   "huge nfds EINVAL\n")


@pytest.mark.parametrize("arch", ARCHES)
def test_nonblocking_pipes_and_flags(run_guest: Callable[..., Run], arch: str) -> None:
    out = _run(run_guest, arch, "nonblock")
    assert out == ("F_GETFL 0x800 F_GETFD 1\n"
                   "read empty -1 EAGAIN\n"
                   "filled 64000 then EAGAIN\n"
                   "after F_SETFL 0\n"
                   "after FIONBIO 0x800\n"
                   "dup shares flags 0x800\n"
                   "pipe2 bad flags -1 EINVAL\n")


@pytest.mark.parametrize("arch", ARCHES)
def test_unix_sockets_by_path_and_abstract_name(run_guest: Callable[..., Run],
                                                arch: str) -> None:
    out = _run(run_guest, arch, "unixsock")
    for label, name_len in (("path", 12), ("abstract", 16)):
        assert f"{label}: server got 4 'ping' peer len 2\n" in out
        assert f"{label}: eof 0\n" in out
        assert f"{label}: name len {name_len}\n" in out
    assert out.count("client got 4 'pong'\n") == 2
    assert "node is socket 1\nbind again -1 EADDRINUSE\nconnect stale -1 ECONNREFUSED\n" \
        in out


@pytest.mark.parametrize("arch", ARCHES)
def test_fifo_between_two_threads(run_guest: Callable[..., Run], arch: str) -> None:
    out = _run(run_guest, arch, "fifo")
    assert out == ("is fifo 1\n"
                   "nonblock writer -1 ENXIO\n"
                   "fifo read 16 'through the fifo'\n"
                   "nonblock reader ok 1, read 0\n")


def test_other_families_are_refused(run_guest: Callable[..., Run]) -> None:
    assert "inet -1 EAFNOSUPPORT\n" in _run(run_guest, "x86_64", "pairs")


def test_write_without_reader_raises_sigpipe(run_guest: Callable[..., Run]) -> None:
    """SIGPIPE's default action kills a child; pid 1 is init: discarded, write gives EPIPE."""
    run = run_guest(GUEST, "epipe")
    assert run.status.exit_code == 0, run.status
    assert run.stdout == b"writing\nchild: signaled 1 sig 13\npid 1: write -1 EPIPE\n"


def test_thousands_of_pipes_stop_at_the_fd_limit(run_guest: Callable[..., Run]) -> None:
    assert _run(run_guest, "x86_64", "manypipes") == "pipes 510 then EMFILE\n"


def test_poll_on_a_descriptor_closed_meanwhile_returns(run_guest: Callable[..., Run]) -> None:
    assert _run(run_guest, "x86_64", "pollclosed") == "poll on a closed fd returned 1\n"


# -- saved state ---------------------------------------------------------------------------
class GateConsole(BufferConsole):
    """Collects output; stdin waits for ``gate`` (then one byte)."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()
        self.gate = threading.Event()

    def write(self, fd: int, data: bytes) -> None:
        with self.cond:
            super().write(fd, data)
            self.cond.notify_all()

    def read_stdin(self, n: int) -> bytes:
        self.gate.wait(DEADLINE)
        return b"x"

    def wait_for(self, text: bytes) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: text in self.stdout, DEADLINE), self.stdout


@pytest.mark.parametrize("arch", ARCHES)
def test_save_and_restore_in_the_middle_of_a_pipe_transfer(guest: GuestBuilder,
                                                           tmp_path: Path, arch: str) -> None:
    root = make_root(tmp_path, guest("io_pipe_copy", arch), "/bin/io_pipe_copy")
    upper = tmp_path / "upper"
    upper.mkdir()
    spec = PartitionSpec(name="pipesave", root=root, entrypoint="/bin/io_pipe_copy",
                         args=("1048576", "gate"), vcpus=2, memory_bytes=64 << 20,
                         upper=upper)
    console = GateConsole()
    machine = Machine(spec, console)
    result: list[ExitStatus] = []
    runner = threading.Thread(target=lambda: result.append(machine.run()))
    runner.start()
    console.wait_for(b"half")
    machine.pause()
    machine.save_state(tmp_path / "state")
    machine.end_saved()
    console.gate.set()
    runner.join(DEADLINE)
    assert result and result[0].saved
    again = BufferConsole(stdin=b"x")
    status = Machine.restore(spec, again, tmp_path / "state").run()
    assert status.exit_code == 0, status
    plain = BufferConsole(stdin=b"x")
    spec2 = PartitionSpec(name="pipeplain", root=root, entrypoint="/bin/io_pipe_copy",
                          args=("1048576", "gate"), vcpus=2, memory_bytes=64 << 20)
    assert Machine(spec2, plain).run().exit_code == 0
    assert bytes(again.stdout) == bytes(plain.stdout).replace(b"half\n", b"")


# -- the descriptor table as processes will use it --------------------------------------------
def test_fork_copy_shares_descriptions_until_the_last_close() -> None:
    cond = threading.Condition()
    buf = PipeBuffer(cond)
    parent = FdTable()
    rfd, wfd = parent.add_pair(PipeEnd(0, buf, False), PipeEnd(0, buf, True), cloexec=False)
    parent.cloexec.add(wfd)
    child = parent.fork_copy()
    assert child.files[rfd] is parent.files[rfd] and wfd in child.cloexec
    parent.close(wfd)
    assert buf.writers == 1                       # the child's copy still holds it
    child.close_on_exec()
    assert wfd not in child.files and buf.writers == 0
    assert parent.files[rfd].read(10) == b""      # EOF: no writer left anywhere
    parent.close_all()
    assert buf.readers == 1
    child.close_all()
    assert buf.readers == 0
