"""/proc for the guest (procfs.py) and the accounting calls: busybox ps, free, df, mount,
uptime and top work; every /proc path stays inside the partition; getrusage, times,
personality, ioprio, getres[ug]id, priorities and sysinfo answer as Linux does in shape."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import BUSYBOX, Run, make_root, run_machine

MEMORY = 96 << 20


def _lines(run: Run) -> dict[str, str]:
    assert run.status.exit_code == 0, (run.status, run.stdout[-2000:], run.stderr[-2000:])
    out: dict[str, str] = {}
    for line in run.stdout.decode().splitlines():
        key, _, value = line.partition(": ")
        out.setdefault(key, value)
    return out


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_proc_from_c(run_guest: Callable[..., Run], arch: str) -> None:
    got = _lines(run_guest("fm_misc", "one", "two", arch=arch, memory=MEMORY,
                           files={"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
                                  "tmp/.keep": b""}))
    assert got["self"] == "1"
    assert got["exe"] == "/bin/fm_misc"
    assert got["cwd"] == "/tmp"
    assert got["root"] == "/"
    assert got["fd"] == "/tmp/file"
    assert re.fullmatch(r"pipe:\[\d+\]", got["pipe"])
    assert got["cmdline"] == "/bin/fm_misc one two"
    assert got["comm"] == "fm_misc"
    assert got["osrelease"] == "6.1.0-viridian" and got["ostype"] == "Linux"
    assert got["hostname"] == "test-part"
    assert got["meminfo"].split() == ["MemTotal:", str(MEMORY // 1024), "kB"]
    assert got["mounts"] == "overlay / overlay rw,relatime 0 0"
    # links in /proc are walked inside the partition: the guest's own /etc/passwd
    assert got["passwd via root"] == "root:x:0:0:root:/root:/bin/sh"
    assert got["escape"] == "root:x:0:0:root:/root:/bin/sh"
    assert got["host proc"] == ""     # /proc/1/root/proc is ours: an empty environ
    assert got["write proc"] == "13"
    assert got["create proc"] == "13"
    assert got["mkdir proc"] == "13"
    assert got["unlink proc"] == "13"
    assert got["missing pid"] == "2"
    assert got["listing"] == "pids=1 self_is_link=1"
    assert got["stat meminfo"] == "0 444"
    assert got["getrusage"] == "0" and got["rusage sane"] == "1"
    assert got["getrusage thread"] == "0"
    assert got["getrusage children"] == "0 0"
    assert got["getrusage bad"] == "-1 22"
    assert got["times"] == "1"
    assert got["personality"] == "0" and got["personality set"] == "0"
    assert got["ioprio_get"] == str((2 << 13) | 4)
    assert got["ioprio_set"] == "0"
    assert got["ioprio_get again"] == str((2 << 13) | 7)
    assert got["ioprio_get bad"] == "-1 22"
    assert got["getresuid"] == "0 0 0 0" and got["getresgid"] == "0 0 0 0"
    assert got["getpriority"] == "0"
    assert got["setpriority"] == "0" and got["getpriority again"] == "5"
    assert got["sysinfo"] == "0"
    assert got["sysinfo mem"] == f"{MEMORY >> 20} 1 1"


def _busybox(tmp_path: Path, *argv: str) -> str:
    root = make_root(tmp_path, BUSYBOX, "/bin/busybox", {})
    run = run_machine(root, "/bin/busybox", argv, memory=MEMORY, vcpus=2)
    assert run.status.exit_code == 0, (run.status, run.stdout, run.stderr)
    return run.stdout.decode()


@pytest.fixture(autouse=True)
def _needs_busybox(request: pytest.FixtureRequest) -> None:
    if "busybox" in request.node.name and not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")


def test_busybox_ps_lists_pid_1(tmp_path: Path) -> None:
    out = _busybox(tmp_path, "ps").splitlines()
    assert out[0].split() == ["PID", "USER", "COMMAND"]
    assert [line.split(None, 2) for line in out[1:]] == [["1", "0", "/bin/busybox ps"]]
    out = _busybox(tmp_path, "ps", "-o", "pid,ppid,pgid,sid,stat,comm,args").splitlines()
    assert out[1].split() == ["1", "0", "1", "1", "R", "busybox", "/bin/busybox", "ps", "-o",
                              "pid,ppid,pgid,sid,stat,comm,args"]


def test_busybox_free_df_mount_uptime(tmp_path: Path) -> None:
    free = _busybox(tmp_path, "free").splitlines()
    total, used, avail = (int(v) for v in free[1].split()[1:4])
    assert total == MEMORY // 1024 and 0 < used < total and used + avail == total
    df = _busybox(tmp_path, "df", "/").splitlines()
    assert df[1].split()[0] == "overlay" and df[1].split()[-1] == "/"
    assert int(df[1].split()[1]) == (1 << 30) // 1024            # the default disk quota
    mount = _busybox(tmp_path, "mount").splitlines()
    assert mount == ["overlay on / type overlay (rw,relatime)",
                     "proc on /proc type proc (rw,nosuid,nodev,noexec,relatime)"]
    up = _busybox(tmp_path, "uptime")
    assert re.search(r"up 0 min, +0 users, +load average: 1\.00, 1\.00, 1\.00", up), up


def test_busybox_top_batch(tmp_path: Path) -> None:
    out = _busybox(tmp_path, "top", "-bn1").splitlines()
    assert out[0].startswith("Mem: ") and out[1].startswith("CPU: ")
    assert out[2].startswith("Load average: ")
    assert out[3].split()[:2] == ["PID", "PPID"]
    assert out[4].split()[0] == "1" and out[4].endswith("/bin/busybox top -bn1")


def test_busybox_reads_proc_files(tmp_path: Path) -> None:
    out = _busybox(tmp_path, "cat", "/proc/self/stat", "/proc/self/status", "/proc/uptime",
                   "/proc/loadavg", "/proc/stat", "/proc/cpuinfo", "/proc/self/maps",
                   "/proc/self/statm", "/proc/filesystems")
    assert out.startswith("1 (busybox) R 0 1 1 ")
    assert "\nPid:\t1\n" in out and "\nPPid:\t0\n" in out
    assert out.count("processor\t: ") == 2                        # one per vCPU
    assert "[stack]" in out and "[heap]" in out
    assert re.search(r"^cpu  \d+ 0 \d+ \d+", out, re.M)
    listing = _busybox(tmp_path, "ls", "/proc", "/proc/1", "/proc/1/task")
    for name in ("1", "self", "thread-self", "meminfo", "cpuinfo", "stat", "uptime", "mounts",
                 "cmdline", "environ", "maps", "fd", "exe", "cwd", "comm", "statm", "status"):
        assert f"\n{name}\n" in listing, name


def test_proc_links_never_reach_the_host(tmp_path: Path) -> None:
    root = make_root(tmp_path, BUSYBOX, "/bin/busybox", {"etc/hostname": b"guest\n"})
    run = run_machine(root, "/bin/busybox",
                      ("cat", "/proc/1/root/etc/hostname", "/proc/self/cwd/../../etc/hostname",
                       "/proc/thread-self/../../../self/root/etc/hostname"), memory=MEMORY)
    assert run.stdout == b"guest\nguest\nguest\n", run
    for path in ("/proc/1/root/proc/1/root/../../../../etc/shadow", "/proc/1/environ/x",
                 "/proc/self/fd/0/x", "/proc/sys/kernel/../../../proc/../etc/shadow"):
        run = run_machine(root, "/bin/busybox", ("cat", path), memory=MEMORY)
        assert run.status.exit_code == 1 and run.stdout == b"", (path, run)


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_stat_maps_fd_comm_personality(run_guest: Callable[..., Run], arch: str) -> None:
    """/proc/self/stat has Linux's 52 fields with the program's layout (code, stack,
    arguments, environment, brk) and a zombie's exit code; a name with spaces and
    parentheses stays parseable after the last ')'; maps names the exe and a mapped file
    with its offset and the permissions mprotect set; /proc/self/fd lists the directory's
    own descriptor; personality is kept per process, inherited by fork and kept by exec,
    whose comm is the executed file's name."""
    blob = bytes(range(256)) * 64
    got = _lines(run_guest("proc_view", arch=arch, memory=MEMORY,
                           files={"data/blob": blob}))
    assert got["fields"] == "52"
    assert got["code in start/end_code"] == "1"
    assert got["startstack below argv"] == "1"     # argc sits below the strings
    assert got["arg_start is argv[0]"] == "1" and got["args"] == "1"
    assert got["env_start is envp[0]"] == "1"
    assert got["start_brk <= sbrk"] == "1"
    assert got["exit_code"] == "0"
    assert got["comm in stat"] == "(a (b) c) d)"
    assert got["state after comm"] == "R"
    assert got["fields with odd comm"] == "52"
    assert got["PR_GET_NAME"] == "a (b) c) d"
    assert got["file map"] == "r--p 1000 /data/blob"
    assert got["file map 2nd page"] == "r--p 1000 /data/blob"     # one line, both pages
    assert got["anon"] == "rw-p 0 "
    assert got["anon protected"] == "r--p 0 "
    assert got["unmapped"] == "none"
    assert re.fullmatch(r"r-xp [0-9a-f]+ /bin/proc_view", got["code"])
    assert got["stack"] == "rw-p 0 [stack]"
    assert got["fd dir lists itself"] == "1"
    assert got["personality old"] == "0"
    assert got["personality now"] == "0x40000"
    assert got["child personality"] == "0x40000"
    assert got["exec comm"] == "proc_view"
    assert got["exec personality"] == "0x40000"
    assert got["exec child status"] == "0"
    assert got["zombie state"] == "Z"
    assert got["zombie exit_code"] == str(3 << 8)


def test_busybox_ps_lists_itself(tmp_path: Path) -> None:
    """busybox sh runs ps as a forked applet that names itself with PR_SET_NAME: ps shows
    its own process as "ps", a child of the shell."""
    out = _busybox(tmp_path, "sh", "-c", "ps -o pid,ppid,comm; true")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert ["1", "0", "busybox"] in rows
    assert any(r[1:] == ["1", "ps"] for r in rows), out
