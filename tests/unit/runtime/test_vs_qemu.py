"""Guests and busybox applets give the same output and exit code here as under qemu-user.

Each case runs a sequence of commands in one root: under qemu in a copy of the root directory
(with relative paths, as the working directory), here in a Machine whose upper layer persists
between the commands. Output is compared after replacing qemu's host root path with "".
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from runtime_helpers import BUSYBOX, GuestBuilder, make_root, run_machine

FILES = {
    "input.txt": b"banana 3\napple 10\ncherry 7\napple 2\n",
    "data.csv": b"id,name,qty\n1,bolt,30\n2,nut,12\n",
    "sub/deep/file.txt": b"deep\n",
}
ENV = (("GREETING", "hi"),)

# (id, [argv...] per command, stdin)
APPLETS: list[tuple[str, list[list[str]], bytes]] = [
    ("echo", [["echo", "hello", "world"]], b""),
    ("cat", [["cat", "input.txt", "data.csv"]], b""),
    ("cat-stdin", [["cat"]], b"from stdin\n"),
    ("wc", [["wc", "input.txt"]], b""),
    ("sort", [["sort", "-k2", "-n", "input.txt"]], b""),
    ("grep", [["grep", "-n", "apple", "input.txt"]], b""),
    ("grep-miss", [["grep", "durian", "input.txt"]], b""),
    ("sed", [["sed", "s/a/A/g;2d", "input.txt"]], b""),
    ("awk", [["awk", "{s+=$2} END {print s, NR}", "input.txt"]], b""),
    ("head", [["head", "-n", "2", "input.txt"]], b""),
    ("cut", [["cut", "-d,", "-f2", "data.csv"]], b""),
    ("od", [["od", "-c", "data.csv"]], b""),
    ("md5sum", [["md5sum", "input.txt", "data.csv"]], b""),
    ("sha256sum", [["sha256sum", "input.txt"]], b""),
    ("cp", [["cp", "input.txt", "copy.txt"], ["cat", "copy.txt"]], b""),
    ("ls", [["ls", "-1", "sub"], ["ls", "-1", "-d", "sub/deep"]], b""),
    ("find", [["find", "sub", "-name", "*.txt"]], b""),
    ("mkdir-rm", [["mkdir", "-p", "new/dir"], ["rm", "-r", "new"], ["ls", "-1", "new"]], b""),
    ("rm-lower", [["rm", "input.txt"], ["cat", "input.txt"]], b""),
    ("date", [["date", "-d", "@0", "-u"]], b""),
    ("env", [["env"]], b""),
    ("uname", [["uname", "-s", "-m"]], b""),
    ("expr", [["expr", "6", "*", "7"], ["expr", "1", "=", "2"]], b""),
    ("seq", [["seq", "3", "2", "11"]], b""),
    ("sh", [["sh", "-c", "x=5; echo $((x*2)); test -f input.txt && echo yes; exit 3"]], b""),
    ("sh-read", [["sh", "-c", "read a b; echo \"$b-$a\""]], b"one two\n"),
]

GUEST_CASES: list[tuple[str, str, list[str]]] = [
    ("hello", "x86_64", ["5", "a b"]), ("hello", "i386", ["5", "a b"]),
    ("threads", "x86_64", ["100000"]), ("threads", "i386", ["100000"]),
    ("mallocs", "x86_64", []), ("mallocs", "i386", []),
    ("unknown", "x86_64", []), ("unknown", "i386", []),
    ("compute", "x86_64", ["200000"]), ("compute", "i386", ["200000"]),
    ("fpu_state", "x86_64", []), ("fpu_state", "i386", []),
    ("fpu_flags", "x86_64", []), ("fpu_flags", "i386", []),
]


def _qemu(arch: str) -> str:
    exe = "qemu-x86_64" if arch == "x86_64" else "qemu-i386"
    if shutil.which(exe) is None:
        pytest.skip(f"{exe} is not installed")
    return exe


def _under_qemu(arch: str, root: Path, exe: str, commands: list[list[str]],
                stdin: bytes) -> tuple[bytes, list[int]]:
    work = root.parent / "qemu-root"
    shutil.copytree(root, work, symlinks=True)
    out, codes = b"", []
    for argv in commands:
        proc = subprocess.run([_qemu(arch), "." + exe, *argv], cwd=work, input=stdin,
                              capture_output=True, env=dict(ENV), timeout=60)
        out += proc.stdout.replace(str(work).encode(), b"")
        codes.append(proc.returncode)
    return out, codes


def _here(root: Path, exe: str, commands: list[list[str]],
          stdin: bytes) -> tuple[bytes, list[int]]:
    upper = root.parent / "upper"
    upper.mkdir()
    out, codes = b"", []
    for argv in commands:
        run = run_machine(root, exe, tuple(argv), upper=upper, env=ENV, stdin=stdin)
        assert run.status.failed_reason is None, run.status
        assert run.status.exit_code is not None
        out += run.stdout
        codes.append(run.status.exit_code)
    return out, codes


@pytest.mark.parametrize("applet, commands, stdin", APPLETS, ids=[a[0] for a in APPLETS])
def test_busybox_applet_matches_qemu(tmp_path: Path, applet: str, commands: list[list[str]],
                                     stdin: bytes) -> None:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    root = make_root(tmp_path, BUSYBOX, "/bin/busybox", FILES)
    expected = _under_qemu("x86_64", root, "/bin/busybox", commands, stdin)
    assert _here(root, "/bin/busybox", commands, stdin) == expected


@pytest.mark.parametrize("name, arch, args", GUEST_CASES,
                         ids=[f"{n}-{a}" for n, a, _ in GUEST_CASES])
def test_guest_matches_qemu(guest: GuestBuilder, tmp_path: Path, name: str, arch: str,
                            args: list[str]) -> None:
    root = make_root(tmp_path, guest(name, arch), f"/bin/{name}", FILES)
    expected = _under_qemu(arch, root, f"/bin/{name}", [args], b"")
    assert _here(root, f"/bin/{name}", [args], b"") == expected
