"""Programs as execve starts them: dynamically linked ELF (with ld.so from the partition's
root), static-pie, ``#!`` scripts, and real Debian binaries with their libraries.

Roots are assembled from this machine's own binaries (dynroot.py); outputs are compared with
the same binaries run natively where that makes sense.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from dynroot import PY_SKIP_DIRS, DynRoot
from runtime_helpers import BUSYBOX, GUESTS, Run, run_machine

from node_agent.runtime.fs import Sandbox
from node_agent.runtime.loader import AT_BASE, AT_ENTRY, AT_HWCAP, AT_PHDR
from node_agent.runtime.program import ExecError, load_program, parse_shebang

LD64 = "/lib64/ld-linux-x86-64.so.2"
LD32 = "/lib/ld-linux.so.2"
ARCHES = ["x86_64", "i386"]
AT_SYSINFO_EHDR = 33          # the vDSO: there is none

AUXV_C = r"""
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
extern char _start[];
int main(void) {
    const unsigned char *rnd = (const unsigned char *)getauxval(AT_RANDOM);
    int nonzero = 0;
    for (int i = 0; i < 16; i++) nonzero = nonzero || rnd[i];
    printf("base_set=%d entry_is_start=%d pagesz=%lu clktck=%lu platform=%s execfn=%s "
           "random=%d uid=%lu secure=%lu phdr_set=%d\n",
           getauxval(AT_BASE) != 0, getauxval(AT_ENTRY) == (unsigned long)_start,
           getauxval(AT_PAGESZ), getauxval(AT_CLKTCK), (char *)getauxval(AT_PLATFORM),
           (char *)getauxval(AT_EXECFN), nonzero, getauxval(AT_UID), getauxval(AT_SECURE),
           getauxval(AT_PHDR) != 0);
    return 0;
}
"""

FSINFO_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
int main(void) {
    struct statfs s; struct statvfs v; char buf[64];
    int fd = open("/bin/probe", O_RDONLY);
    int r = statfs("/", &s);
    printf("statfs=%d type=%lx bsize=%ld\n", r, (unsigned long)s.f_type, (long)s.f_bsize);
    r = statvfs("/", &v);
    printf("statvfs=%d frsize=%lu namemax=%lu\n", r, v.f_frsize, v.f_namemax);
    errno = 0; r = statfs("/nope", &s); printf("statfs-missing=%d errno=%d\n", r, errno);
    errno = 0; r = (int)getxattr("/", "user.x", buf, sizeof buf);
    printf("getxattr=%d errno=%d\n", r, errno);
    errno = 0; r = (int)lgetxattr("/bin/probe", "user.x", buf, sizeof buf);
    printf("lgetxattr=%d errno=%d\n", r, errno);
    errno = 0; r = (int)fgetxattr(fd, "user.x", buf, sizeof buf);
    printf("fgetxattr=%d errno=%d\n", r, errno);
    printf("listxattr=%d\n", (int)listxattr("/", buf, sizeof buf));
    printf("fadvise=%d bad=%d\n", posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL),
           posix_fadvise(99, 0, 0, 0));
    return 0;
}
"""


def _ld(arch: str) -> str:
    return LD64 if arch == "x86_64" else LD32


def _compile(out: Path, arch: str, *flags: str, source: Path | None = None,
             code: str | None = None) -> Path:
    """gcc without -static (unless ``flags`` say otherwise); skips when it cannot build."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    if arch == "i386" and not Path(LD32).exists():
        pytest.skip(f"no 32-bit dynamic loader at {LD32} (gcc-multilib's libc6-i386)")
    cmd = ["gcc", "-O2", "-w", "-o", str(out), *flags]
    if arch == "i386":
        cmd.insert(1, "-m32")
    if code is not None:
        cmd += ["-x", "c", "-"]
    else:
        assert source is not None
        cmd.append(str(source))
    result = subprocess.run(cmd, input=code, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot build {out.name} for {arch}: {result.stderr[-300:]}")
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dynbuilt")


def _root(tmp: Path, *binaries: tuple[Path, str]) -> DynRoot:
    """A root holding each host binary at its guest path, with its libraries and the
    dynamic linker cache."""
    root = DynRoot(tmp / "root")
    for host, guest in binaries:
        root.add(host)                  # its libraries, at their host paths
        dest = root.root / guest.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.copy2(host, dest)
    if Path("/etc/ld.so.cache").exists():
        root.copy("/etc/ld.so.cache")
    return root


def _native(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, env=env or {"LC_ALL": "C"},
                          cwd=cwd, timeout=60)


def _ok(run: Run) -> Run:
    assert run.status.failed_reason is None, (run.status, run.stderr[-2000:])
    return run


# -- C programs ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_dynamic_c_program_runs_with_its_interpreter(built: Path, tmp_path: Path,
                                                    arch: str) -> None:
    binary = _compile(built / f"hello-dyn-{arch}", arch, source=GUESTS / "hello.c")
    root = _root(tmp_path, (binary, "/bin/hello"))
    run = _ok(run_machine(root.root, "/bin/hello", ("5", "a b"), env=(("GREETING", "hi"),)))
    assert run.status.exit_code == 5
    assert run.stdout == b"argc=3 exe=/bin/hello\narg1=5\narg2=a b\nGREETING=hi\n"
    assert run.stderr == b"to-stderr\n"
    native = _native([str(binary), "5", "a b"], env={"GREETING": "hi"})
    assert native.returncode == 5
    assert native.stdout.split(b"\n")[1:] == run.stdout.split(b"\n")[1:]


@pytest.mark.parametrize("arch", ARCHES)
def test_dynamic_threads_match_native(built: Path, tmp_path: Path, arch: str) -> None:
    binary = _compile(built / f"threads-dyn-{arch}", arch, "-pthread",
                      source=GUESTS / "threads.c")
    root = _root(tmp_path, (binary, "/bin/threads"))
    run = _ok(run_machine(root.root, "/bin/threads", ("20000",), vcpus=2))
    native = _native([str(binary), "20000"])
    assert (run.status.exit_code, run.stdout) == (native.returncode, native.stdout)


@pytest.mark.parametrize("arch", ARCHES)
def test_auxiliary_vector_of_a_dynamic_program(built: Path, tmp_path: Path, arch: str) -> None:
    binary = _compile(built / f"auxv-dyn-{arch}", arch, code=AUXV_C)
    root = _root(tmp_path, (binary, "/bin/auxv"))
    run = _ok(run_machine(root.root, "/bin/auxv"))
    platform = "x86_64" if arch == "x86_64" else "i686"
    assert run.stdout.decode() == (
        f"base_set=1 entry_is_start=1 pagesz=4096 clktck=100 platform={platform} "
        "execfn=/bin/auxv random=1 uid=0 secure=0 phdr_set=1\n")


@pytest.mark.parametrize("arch", ARCHES)
def test_static_pie_runs_without_interpreter(built: Path, tmp_path: Path, arch: str) -> None:
    binary = _compile(built / f"auxv-spie-{arch}", arch, "-static-pie", code=AUXV_C)
    root = DynRoot(tmp_path / "root")
    shutil.copy2(binary, root.root / "auxv")
    run = _ok(run_machine(root.root, "/auxv"))
    assert run.stdout.startswith(b"base_set=0 entry_is_start=1 pagesz=4096")


def test_load_program_places_the_interpreter_in_the_mmap_area(built: Path,
                                                              tmp_path: Path) -> None:
    binary = _compile(built / "hello-dyn-x86_64", "x86_64", source=GUESTS / "hello.c")
    root = _root(tmp_path, (binary, "/bin/hello"))
    (tmp_path / "upper").mkdir()
    fs = Sandbox(root.root, tmp_path / "upper", "/bin/hello")
    program = load_program(fs, "/bin/hello", ["/bin/hello"], [], 64 << 20, "/")
    try:
        mem = program.mem
        assert mem.u64(program.sp) == 1                                    # argc
        assert mem.u64(program.sp + 16) == mem.u64(program.sp + 24) == 0   # argv, envp end
        aux: dict[int, int] = {}
        at = program.sp + 32
        while mem.u64(at):
            aux[mem.u64(at)] = mem.u64(at + 8)
            at += 16
        assert aux[AT_BASE] == program.interp_base
        assert mem.base <= aux[AT_ENTRY] < mem.image_end        # the program's own entry
        assert mem.base <= aux[AT_PHDR] < mem.image_end
        assert aux[AT_HWCAP] == 0x078BFBFD and AT_SYSINFO_EHDR not in aux
        assert program.interp == "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        assert program.exe == "/bin/hello"
        assert mem.image_end <= program.interp_base < mem.gap_low
        assert program.interp_base <= program.entry < program.interp_base + 0x100000
        assert mem.host_read(program.interp_base, 4) == b"\x7fELF"
        assert any(lo <= program.entry < hi for lo, hi in mem.exec_ranges)
        assert mem.is_mapped(program.interp_base, 4096)       # munmap-able, counted
    finally:
        program.mem.close()


@pytest.mark.parametrize("arch", ARCHES)
def test_statfs_xattrs_and_fadvise(built: Path, tmp_path: Path, arch: str) -> None:
    """What Debian's programs ask at start: statfs (libselinux), getxattr (ls's ACLs),
    fadvise (cat, sort) answer as Linux does on a filesystem without attributes."""
    binary = _compile(built / f"fsinfo-{arch}", arch, code=FSINFO_C)
    root = _root(tmp_path, (binary, "/bin/probe"))
    run = _ok(run_machine(root.root, "/bin/probe"))
    assert run.stdout.decode() == (
        "statfs=0 type=794c7630 bsize=4096\nstatvfs=0 frsize=4096 namemax=255\n"
        "statfs-missing=-1 errno=2\ngetxattr=-1 errno=61\nlgetxattr=-1 errno=61\n"
        "fgetxattr=-1 errno=61\nlistxattr=0\nfadvise=0 bad=9\n")
    assert run.status.unknown_syscalls == {}


# -- #! scripts -------------------------------------------------------------------------------
@pytest.fixture
def script_root(tmp_path: Path) -> DynRoot:
    if not BUSYBOX.exists():
        pytest.skip("/bin/busybox is not installed")
    root = DynRoot(tmp_path / "root")
    root.write("/bin/busybox", BUSYBOX.read_bytes(), 0o755)
    return root


def test_script_runs_through_its_interpreter(script_root: DynRoot) -> None:
    script_root.write("/bin/greet", "#!/bin/busybox sh\necho \"$0|$1|$2\"\nexit 7\n", 0o755)
    run = _ok(run_machine(script_root.root, "/bin/greet", ("one", "two words")))
    assert run.status.exit_code == 7
    assert run.stdout == b"/bin/greet|one|two words\n"


def test_nested_scripts_and_their_limit(script_root: DynRoot) -> None:
    script_root.write("/s/inner", "#!/bin/busybox sh\necho \"inner $0 $*\"\n", 0o755)
    script_root.write("/s/outer", "#!/s/inner\nnot run\n", 0o755)
    run = _ok(run_machine(script_root.root, "/s/outer", ("x",)))
    assert run.stdout == b"inner /s/inner /s/outer x\n"
    # four scripts in a chain run; a fifth is ELOOP
    script_root.write("/s/l1", "#!/s/inner\n", 0o755)
    for i in range(2, 6):
        script_root.write(f"/s/l{i}", f"#!/s/l{i - 1}\n", 0o755)
    assert _ok(run_machine(script_root.root, "/s/l3")).stdout == \
        b"inner /s/inner /s/l1 /s/l2 /s/l3\n"
    reason = run_machine(script_root.root, "/s/l4").status.failed_reason or ""
    assert "more than 4 nested #! scripts (ELOOP)" in reason, reason


def test_script_with_missing_interpreter_fails_clearly(script_root: DynRoot) -> None:
    script_root.write("/bin/lost", "#!/usr/bin/nope -x\necho\n", 0o755)
    status = run_machine(script_root.root, "/bin/lost").status
    assert status.exit_code is None
    assert status.failed_reason == ("bad image: the interpreter of /bin/lost: /usr/bin/nope "
                                    "not found in the root (ENOENT)")


@pytest.mark.parametrize(("line", "expected"), [
    (b"#!/bin/sh\n", ("/bin/sh", None)),
    (b"#! /bin/sh  -e -x \t\nrest", ("/bin/sh", "-e -x")),
    (b"#!\t/usr/bin/env\tpython3\n", ("/usr/bin/env", "python3")),
    (b"#!/bin/sh", ("/bin/sh", None)),
    (b"#!/bin/sh\0junk\n", ("/bin/sh", None)),
], ids=["plain", "spaces", "tabs", "no-newline", "nul"])
def test_shebang_lines_are_read_as_linux_does(line: bytes,
                                              expected: tuple[str, str | None]) -> None:
    assert parse_shebang(line, "/s") == expected


@pytest.mark.parametrize("line", [b"#!\n", b"#!   \t\n", b"#!/" + b"x" * 300],
                         ids=["empty", "blank", "cut-short"])
def test_bad_shebang_lines_are_enoexec(line: bytes) -> None:
    with pytest.raises(ExecError) as info:
        parse_shebang(line, "/s")
    assert info.value.errno == 8


# -- Debian's own programs --------------------------------------------------------------------
@pytest.fixture(scope="module")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> DynRoot:
    tools = [Path(p) for p in ("/bin/ls", "/usr/bin/sort", "/bin/sed", "/bin/cat", "/bin/bash")]
    if not all(p.exists() for p in tools):
        pytest.skip("coreutils/sed are not installed")
    root = DynRoot(tmp_path_factory.mktemp("debian") / "root")
    for tool in tools:
        root.add(tool)
    root.copy("/etc/ld.so.cache")
    root.write("/data/fruit.txt", "pear 3\napple 10\nBanana 7\napple 2\n")
    root.write("/data/notes.md", "# notes\n")
    (root.root / "data" / "sub").mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize("argv", [
    ["/bin/ls", "-1", "data"],
    ["/bin/ls", "-a", "-p", "data"],
    ["/usr/bin/sort", "-k2", "-n", "data/fruit.txt"],
    ["/usr/bin/sort", "-r", "data/fruit.txt"],
    ["/bin/sed", "-e", "s/a/A/g;2d", "data/fruit.txt"],
    ["/bin/cat", "data/fruit.txt", "data/notes.md"],
    ["/bin/bash", "-c", "for f in data/*; do echo \"$f\"; done | /usr/bin/sort -r; "
     "/bin/cat data/fruit.txt | /bin/sed -n 2p; x=$(/bin/ls data | /usr/bin/sort | "
     "/bin/sed -n 1p); echo \"first=$x $((6 * 7))\"; (exit 3); echo \"rc=$?\""],
], ids=["ls", "ls-a", "sort-k2", "sort-r", "sed", "cat", "bash-pipelines"])
def test_debian_programs_match_native(debian_root: DynRoot, argv: list[str]) -> None:
    run = _ok(run_machine(debian_root.root, argv[0], tuple(argv[1:]), cwd="/",
                          env=(("LC_ALL", "C"),)))
    native = _native(argv, cwd=debian_root.root)
    assert (run.status.exit_code, run.stdout) == (native.returncode, native.stdout)
    assert run.stdout and not run.stderr
    # statfs, getxattr, fadvise are known now; only socket (nscd) may be unknown
    assert set(run.status.unknown_syscalls) <= {41}, run.status.unknown_syscalls


def test_ls_long_listing(debian_root: DynRoot) -> None:
    """ls -l reads ACLs through lgetxattr (ENODATA: none) and owners' names (no passwd)."""
    run = _ok(run_machine(debian_root.root, "/bin/ls", ("-l", "-n", "/data"),
                          env=(("LC_ALL", "C"),)))
    assert (run.status.exit_code, run.stderr) == (0, b"")
    lines = run.stdout.decode().splitlines()
    assert lines[0].startswith("total ")
    assert [line.split()[-1] for line in lines[1:]] == ["fruit.txt", "notes.md", "sub"]
    assert lines[1].split()[:5] == ["-rw-r--r--", "1", "0", "0", "33"]


def test_sort_reads_stdin(debian_root: DynRoot) -> None:
    data = b"b\nc\na\n"
    run = _ok(run_machine(debian_root.root, "/usr/bin/sort", stdin=data))
    assert run.stdout == b"a\nb\nc\n"


def test_python_with_its_standard_library(tmp_path: Path) -> None:
    python = Path("/usr/bin/python3.11")
    if not python.exists() or not Path("/usr/lib/python3.11/json").is_dir():
        pytest.skip("Debian's python3.11 is not installed")
    root = DynRoot(tmp_path / "root").add(python)
    root.add_tree("/usr/lib/python3.11", PY_SKIP_DIRS)
    root.copy("/etc/ld.so.cache")
    code = ("import json, hashlib, sys; print(json.dumps({'sha': hashlib.sha256(b'abc')"
            ".hexdigest(), 'v': sys.version_info[:2], 'exe': sys.executable}))")
    start = time.monotonic()
    run = _ok(run_machine(root.root, str(python), ("-c", code), memory=256 << 20))
    elapsed = time.monotonic() - start
    native = _native([str(python), "-c", code])
    assert (run.status.exit_code, run.stdout) == (0, native.stdout)
    assert elapsed < 60, elapsed


# -- hostile interpreters ---------------------------------------------------------------------
def _with_interp(built: Path, tmp_path: Path, interp: str) -> DynRoot:
    """hello.c linked against ``interp`` (PT_INTERP), in a root with the usual libraries."""
    binary = _compile(tmp_path / "hello-odd", "x86_64", f"-Wl,--dynamic-linker={interp}",
                      source=GUESTS / "hello.c")
    return _root(tmp_path, (binary, "/bin/hello"))


def _reason(root: DynRoot) -> str:
    status = run_machine(root.root, "/bin/hello").status
    assert status.exit_code is None
    return status.failed_reason or ""


def test_interpreter_path_with_dotdot_stays_inside_the_root(built: Path,
                                                            tmp_path: Path) -> None:
    root = _with_interp(built, tmp_path, "/../../../../.." + LD64)
    assert _ok(run_machine(root.root, "/bin/hello")).stdout.startswith(b"argc=1")
    # a file that exists on the host at the path ``..`` would reach is not found
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(LD64, outside / "ld.so")
    (tmp_path / "b").mkdir()
    hostile = _with_interp(built, tmp_path / "b", "/../../../../.." + str(outside / "ld.so"))
    assert _reason(hostile) == ("bad image: the interpreter of /bin/hello: /../../../../.."
                                f"{outside}/ld.so not found in the root (ENOENT)")


def test_interpreter_behind_an_absolute_symlink_resolves_inside(built: Path,
                                                                tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(LD64, outside / "ld.so")
    root = _with_interp(built, tmp_path, "/lib64/evil-ld.so")
    os.symlink(outside / "ld.so", root.root / "lib64" / "evil-ld.so")
    assert "/lib64/evil-ld.so not found in the root (ENOENT)" in _reason(root)
    # the same link target inside the root is what runs
    inside = root.root / str(outside).lstrip("/")
    inside.mkdir(parents=True)
    shutil.copy2(LD64, inside / "ld.so")
    assert _ok(run_machine(root.root, "/bin/hello")).stdout.startswith(b"argc=1")


@pytest.mark.parametrize(("make", "expected"), [
    ("directory", "the interpreter of /bin/hello: /x/ld.so is not a regular file (EACCES)"),
    ("truncated", "the interpreter /x/ld.so: segment 1 data lies past the end of the file "
                  "(ENOEXEC)"),
    ("text", "the interpreter /x/ld.so: not an ELF file (ENOEXEC)"),
    ("dynamic", "the interpreter /x/ld.so itself needs an interpreter (ELIBBAD)"),
    ("missing", "the interpreter of /bin/hello: /x/ld.so not found in the root (ENOENT)"),
])
def test_bad_interpreters_fail_with_one_clear_line(built: Path, tmp_path: Path, make: str,
                                                   expected: str) -> None:
    root = _with_interp(built, tmp_path, "/x/ld.so")
    target = root.root / "x" / "ld.so"
    target.parent.mkdir(exist_ok=True)
    if make == "directory":
        target.mkdir()
    elif make == "truncated":
        target.write_bytes(Path(LD64).read_bytes()[:8192])
    elif make == "text":
        target.write_text("#!/bin/sh\n")
    elif make == "dynamic":
        shutil.copy2(root.root / "bin" / "hello", target)
    assert _reason(root) == f"bad image: {expected}"
