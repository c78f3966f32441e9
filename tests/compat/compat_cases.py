"""The compatibility table: each case runs a program in a Machine and under the reference
(qemu-user, or the host kernel where qemu-user is wrong) and compares stdout and exit code.

A case names its binary ("busybox", "bash", "zsh", "sash", or "c:NAME" for
tests/compat/programs/NAME.c built for ``arch``), argv, stdin and extra root files. Expected
differences are declared (a regex replaced on both outputs, with the reason). A case that
fails today carries ``known_gap`` (why): the test is a strict xfail, so the table shows what
works and a case that starts passing is reported until its marker is removed.

Data only: tests/compat/compat_runner.py runs it, test_compat.py and bench/compat.py use it.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

__all__ = ["CASES", "ENV", "Case", "Diff"]

#: The guest environment on both sides.
ENV: tuple[tuple[str, str], ...] = (("PATH", "/bin"), ("HOME", "/"), ("LANG", "C"),
                                    ("TZ", "UTC"), ("USER", "root"))


@dataclass(frozen=True)
class Diff:
    """A declared difference: ``pattern`` (regex, multiline) becomes ``replacement``."""

    pattern: str
    replacement: str
    reason: str


@dataclass(frozen=True)
class Case:
    """One row of the table."""

    name: str
    group: str
    binary: str                      # busybox | bash | zsh | sash | c:PROGRAM
    argv: tuple[str, ...]
    arch: str = "x86_64"
    stdin: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict, hash=False)
    diffs: tuple[Diff, ...] = ()
    known_gap: str | None = None     # why it fails today (strict xfail)
    reference: str = "qemu"          # "qemu" or "native" (then say why in reference_reason)
    reference_reason: str = ""
    timeout: float = 10.0
    memory: int = 64 << 20

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}-{self.arch}"


# -- declared differences and gaps, named once --------------------------------------------
PIDS = Diff(r"\b\d{2,7}\b", "PID", "process ids are per partition / per host namespace")
DIGITS = Diff(r"\d+(\.\d+)?", "N", "times, sizes and counters reflect the machine running it")
KB = Diff(r"\d+ kB", "N kB", "the values reflect the partition (memory size), not the host")
NPROC = Diff(r"^processors \d+$", "processors N",
             "the processor count is the partition's vCPUs, not the host's CPUs")
QEMU_PROC = ("qemu-user passes /proc/self/status and /proc/self/stat mostly through or fakes "
             "them (zeros), describing the emulator process, not the guest")
QEMU_PS = "under qemu-user processes show as the emulator (ld.so) in /proc"
QEMU_ZSH = "zsh-static as pid 1 under qemu-user hangs once it forks or takes a signal"
QEMU_INIT = ("the guest is pid 1 (as in a partition): the kernel drops a default-action signal "
             "sent to init, and qemu-user, re-raising it on itself to die, then hangs")

# Why cases fail today (measured against the runtime at the time the case was added).
FORK = "fork/vfork/clone of a new process returns ENOSYS (no processes yet)"
EXEC = "execve returns ENOSYS"
SPAWN = "system()/posix_spawn: clone(CLONE_VM|CLONE_VFORK) returns ENOSYS"
SIG = "signal handlers are never run: a self-sent signal ends the partition with 128+N"
TIMERS = "alarm/setitimer/pause/rt_sigsuspend return ENOSYS (no SIGALRM)"
EINTR = "setitimer returns ENOSYS, and a read on an empty pipe returns EAGAIN instead of blocking"
SIGPIPE = "write to a pipe without readers returns EPIPE but no SIGPIPE is delivered"
INIT = ("a default-action signal sent to pid 1 ends the partition (exit 143); Linux drops it "
        "for init (as in any container)")
FAULTSIG = "a guest fault ends the partition ('guest fault: ...') instead of raising SIGSEGV/SIGFPE"
PIPES = ("pipes do not block between threads: read on an empty pipe and write to a full one "
         "return EAGAIN instead of waiting")
PIPESZ = PIPES + "; F_GETPIPE_SZ and FIONREAD return an error"
POLL = "poll/ppoll ignore the timeout and report every pipe readable; no POLLHUP/POLLERR"
SELECT = "select/pselect6 return an error (pselect6 ENOSYS)"
SOCK = "AF_UNIX sockets (socket/socketpair/bind/connect) return ENOSYS"
FIFO = "mkfifo (mknodat) returns ENOSYS"
EPOLL = "epoll_create1/epoll_ctl/epoll_wait return ENOSYS"
EVENTFD = "eventfd2 returns ENOSYS"
NONBLOCK = "F_GETFL does not report the O_NONBLOCK that pipe2 set"
MODES = "chmod/fchmod/umask succeed but modes are not kept (always 0644/0755)"
OWNERS = "chown/fchown/lchown succeed but owners are not kept (always 0:0)"
UTIMES = "utimensat/futimens succeed but do not set the times (nor reject a bad tv_nsec)"
RENAME = "renameat2 RENAME_EXCHANGE is refused (EINVAL)"
FALLOC = "fallocate returns ENOSYS"
SHARED = ("MAP_SHARED file mappings are private copies: stores reach neither the file nor "
          "other mappings")
MSYNC = "msync returns ENOSYS (and MAP_SHARED stores never reach the file)"
PROC = "/proc is not provided (ENOENT), except /proc/self/exe"
PROC_FORK = "busybox runs these applets through fork (ENOSYS); /proc is not provided either"
RUSAGE = "getrusage returns ENOSYS"
TIMES = "times returns ENOSYS"
PERSONALITY = "personality returns ENOSYS"
RESUID = "getresuid/getresgid return ENOSYS"
FPU_INIT = ("the initial x87 control word and MXCSR are 0, not 0x37f/0x1f80: x87 arithmetic runs "
            "at 24-bit precision and floating point exception flags are not raised")
SASH = "sash hands a command line with ';' (and any external command) to fork: ENOSYS"


def sh(name: str, group: str, script: str, *, stdin: bytes = b"",
       files: dict[str, bytes] | None = None, diffs: tuple[Diff, ...] = (),
       gap: str | None = None, shell: str = "busybox", reference: str = "qemu",
       reason: str = "", timeout: float = 10.0) -> Case:
    """A script case: ``busybox sh -c``, ``bash-static -c``, ``zsh-static -c``, ``sash -c``."""
    argv = ("sh", "-c", script) if shell == "busybox" else ("-c", script)
    prefix = {"busybox": "bb", "bash": "bash", "zsh": "zsh", "sash": "sash"}[shell]
    return Case(f"{prefix}-{name}", group, shell, argv, stdin=stdin, files=dict(files or {}),
                diffs=diffs, known_gap=gap, reference=reference, reference_reason=reason,
                timeout=timeout)


def prog(program: str, sub: str, group: str, *args: str, gap: str | None = None,
         gap_i386: str | None = None, diffs: tuple[Diff, ...] = (), reference: str = "qemu",
         reason: str = "", archs: tuple[str, ...] = ("x86_64", "i386"),
         timeout: float = 10.0) -> list[Case]:
    """A C program subtest, one case per architecture."""
    return [Case(f"{program}-{sub}", group, f"c:{program}", (sub, *args), arch=arch,
                 diffs=diffs, known_gap=(gap_i386 or gap) if arch == "i386" else gap,
                 reference=reference, reference_reason=reason, timeout=timeout)
            for arch in archs]


GZ = gzip.compress(b"compressed line one\ncompressed line two\n", mtime=0)
INPUT = {"/data/input.txt": b"banana 3\napple 10\ncherry 7\napple 2\n",
         "/data/sub/deep.txt": b"deep\n", "/data/notes.gz": GZ}

PROCESSES: list[Case] = [
    sh("pipeline", "processes", "echo c b a | tr ' ' '\\n' | sort | wc -l", gap=FORK),
    sh("cmdsubst", "processes", 'x=$(echo inner; echo two); echo "[$x]"', gap=FORK),
    sh("subshell", "processes", "(cd /tmp && pwd); pwd; (exit 4); echo rc=$?", gap=FORK),
    sh("bg-wait", "processes", "sleep 0.1 & echo started; wait $!; echo waited $?", gap=FORK),
    sh("two-externals", "processes", "cat /data/input.txt; wc -l /data/input.txt",
       files=INPUT, gap=FORK),
    sh("find-exec", "processes", "find /data -name '*.txt' -exec wc -c {} \\; | sort",
       files=INPUT, gap=FORK),
    sh("xargs", "processes", "printf '1\\n2\\n3\\n' | xargs -n1 echo n", gap=FORK),
    sh("timeout", "processes", "timeout 1 sleep 5; echo rc=$?; timeout 5 true; echo rc=$?",
       gap=FORK),
    sh("env-cmd", "processes", "env -i A=1 B=2 env; env X=y sh -c 'echo $X'", gap=FORK),
    sh("awk-pipe", "processes",
       "awk 'BEGIN { print \"b\\na\\nc\" | \"sort\"; close(\"sort\"); print \"done\" }'",
       gap=FORK),
    sh("exit-status", "processes", "false; echo $?; ! true; echo $?; sh -c 'exit 9'; echo $?",
       gap=FORK),
    sh("pipeline", "processes", "echo c b a | tr ' ' '\\n' | sort; echo ${PIPESTATUS[@]}",
       shell="bash", gap=FORK),
    sh("cmdsubst", "processes", 'x=$(echo inner); y=`echo back`; echo "$x $y"',
       shell="bash", gap=FORK),
    sh("bg-wait", "processes", "(sleep 0.1; exit 6) & wait $!; echo waited $?",
       shell="bash", gap=FORK),
    sh("pipeline", "processes", "echo c b a | tr ' ' '\\n' | sort -r", shell="zsh",
       gap=FORK, reference="native", reason=QEMU_ZSH),
    sh("cmdsubst", "processes", 'print -- "$(echo zsh inner)"', shell="zsh",
       gap=FORK, reference="native", reason=QEMU_ZSH),
    # sash -c runs "echo x; exit 3" through /bin/sh and exits 0; from stdin as pid 1 sash
    # also exits 0 (Linux and qemu-user agree): the reference, not the brief, is the truth.
    sh("exit", "processes", "echo x; exit 3", shell="sash", gap=SASH),
    Case("sash-stdin-exit", "processes", "sash", (), stdin=b"echo x\nexit 3\n", known_gap=SASH),
    sh("external", "processes", "echo before; /bin/echo external", shell="sash", gap=SASH),
    *prog("procs", "fork_wait", "processes", gap=FORK),
    *prog("procs", "vfork", "processes", gap=FORK),
    *prog("procs", "execve", "processes", gap=EXEC),
    *prog("procs", "wait4", "processes", gap=FORK),
    *prog("procs", "waitid", "processes", gap=FORK),
    *prog("procs", "getppid", "processes", gap=FORK),
    *prog("procs", "orphan", "processes", gap=FORK),
    *prog("procs", "setsid", "processes", gap=FORK),
    *prog("procs", "killpg", "processes", gap=FORK),
    *prog("procs", "system", "processes", gap=SPAWN),
    *prog("procs", "spawn", "processes", gap=SPAWN),
]

SIGNALS: list[Case] = [
    *prog("signals", "handler", "signals", gap=SIG),
    *prog("signals", "siginfo", "signals", gap=SIG),
    *prog("signals", "resethand", "signals", gap=SIG, reference="native", reason=QEMU_INIT),
    *prog("signals", "nodefer", "signals", gap=SIG),
    *prog("signals", "pending", "signals", gap=SIG),
    *prog("signals", "ignored", "signals", gap=SIG),
    *prog("signals", "altstack", "signals", gap=SIG),
    *prog("signals", "alarm", "signals", gap=TIMERS),
    *prog("signals", "itimer", "signals", gap=TIMERS, timeout=3),
    *prog("signals", "sigsuspend", "signals", gap=TIMERS),
    *prog("signals", "sigtimedwait", "signals", gap=SIG),
    *prog("signals", "siglongjmp", "signals", gap=SIG),
    *prog("signals", "segv", "signals", gap=FAULTSIG),
    *prog("signals", "fpe", "signals", gap=FAULTSIG),
    *prog("signals", "eintr", "signals", gap=EINTR),
    *prog("signals", "sigpipe", "signals", gap=SIGPIPE, reference="native", reason=QEMU_INIT),
    *prog("signals", "default", "signals", "15", gap=INIT, reference="native", reason=QEMU_INIT),
    *prog("signals", "child_status", "signals", gap=FORK),
    sh("kill-self", "signals", "echo before; kill -TERM $$; echo after", gap=INIT,
       reference="native", reason=QEMU_INIT),
    sh("kill-child", "signals", "sh -c 'kill -KILL $$'; echo rc=$?", gap=FORK),
    sh("trap-exit", "signals", "trap 'echo t' EXIT; echo body", gap=None),
    sh("trap-int", "signals", "trap 'echo caught' INT; kill -INT $$; echo after", gap=SIG),
    sh("trap-exit", "signals", "trap 'echo t' EXIT; echo body; exit 2", shell="bash"),
    sh("trap-int", "signals", "trap 'echo caught INT' INT; kill -INT $$; echo after",
       shell="bash", gap=SIG),
    sh("sigpipe", "signals", "yes | head -n 2; echo ${PIPESTATUS[@]}", shell="bash", gap=FORK),
    sh("trap-exit", "signals", "trap 'echo t' EXIT; echo body", shell="zsh"),
    sh("trap-int", "signals", "trap 'echo caught' INT; kill -INT $$; echo after",
       shell="zsh", gap=SIG, reference="native", reason=QEMU_ZSH),
]

BLOCKING: list[Case] = [
    *prog("blockio", "pipe1m", "blocking-io", gap=PIPES),
    *prog("blockio", "readblock", "blocking-io", gap=PIPES),
    *prog("blockio", "writeblock", "blocking-io", gap=PIPESZ),
    *prog("blockio", "pipebuf", "blocking-io", gap=PIPES),
    *prog("blockio", "poll", "blocking-io", gap=POLL),
    *prog("blockio", "pollhup", "blocking-io", gap=POLL),
    *prog("blockio", "select", "blocking-io", gap=SELECT),
    *prog("blockio", "epoll", "blocking-io", gap=EPOLL),
    *prog("blockio", "eventfd", "blocking-io", gap=EVENTFD),
    *prog("blockio", "sp_stream", "blocking-io", gap=SOCK, timeout=3),
    *prog("blockio", "sp_dgram", "blocking-io", gap=SOCK),
    *prog("blockio", "unix_bind", "blocking-io", gap=SOCK, timeout=3),
    *prog("blockio", "mkfifo", "blocking-io", gap=FIFO),
    *prog("blockio", "pipe2nb", "blocking-io", gap=NONBLOCK),
]

FILES: list[Case] = [
    *prog("files", "chmod", "files", gap=MODES),
    *prog("files", "umask", "files", gap=MODES),
    *prog("files", "chown", "files", gap=OWNERS),
    *prog("files", "utimensat", "files", gap=UTIMES),
    *prog("files", "link", "files"),
    *prog("files", "symlinkat", "files"),
    *prog("files", "renameat2", "files", gap=RENAME),
    *prog("files", "fallocate", "files", gap=FALLOC),
    *prog("files", "mmap_shared", "files", gap=SHARED),
    *prog("files", "msync", "files", gap=MSYNC),
    sh("chmod-ls", "files", "touch /tmp/f; chmod 750 /tmp/f; ls -l /tmp/f | cut -c1-10",
       gap=FORK),
]

PROCFS: list[Case] = [
    *prog("procfs", "stat", "proc", gap=PROC, reference="native", reason=QEMU_PROC),
    *prog("procfs", "status", "proc", gap=PROC, reference="native", reason=QEMU_PROC),
    *prog("procfs", "cmdline", "proc", "a b", "", "c", gap=PROC),
    *prog("procfs", "maps", "proc", gap=PROC, reference="native",
          reason="qemu-user's emulated /proc/self/maps shows guest code as r--p (not r-xp)"),
    *prog("procfs", "fd", "proc", gap=PROC),
    *prog("procfs", "exe", "proc"),
    *prog("procfs", "cwd", "proc", gap=PROC),
    *prog("procfs", "rusage", "proc", gap=RUSAGE),
    *prog("procfs", "times", "proc", gap=TIMES),
    *prog("procfs", "personality", "proc", gap=PERSONALITY),
    *prog("procfs", "resuid", "proc", gap=RESUID),
    sh("meminfo", "proc", "grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo",
       diffs=(KB, Diff(r" +", " ", "column padding follows the numbers' widths")), gap=PROC_FORK),
    sh("cpuinfo", "proc",
       "echo processors $(grep -c ^processor /proc/cpuinfo); "
       "grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\\n' | grep -x -E 'fpu|sse2|cx8' | sort",
       diffs=(NPROC,), gap=PROC_FORK),
    sh("mounts", "proc", "awk '$2 == \"/proc\" {print $1, $2, $3}' /proc/mounts", gap=PROC),
    sh("uptime", "proc", "awk '{print NF, ($1 > 0), ($2 >= 0)}' /proc/uptime", gap=PROC),
    sh("loadavg", "proc",
       "grep -c -E '^[0-9]+[.][0-9]{2} [0-9]+[.][0-9]{2} [0-9]+[.][0-9]{2} [0-9]+/[0-9]+ "
       "[0-9]+$' /proc/loadavg", gap=PROC_FORK),
    sh("self-status", "proc", "grep -E '^(Name|State):' /proc/self/status", gap=PROC_FORK),
    sh("ps", "proc", "ps -o pid,comm | awk 'NR == 1 {print} $2 == \"ps\" {print \"ps listed\"}'",
       gap=PROC_FORK, reference="native", reason=QEMU_PS),
    sh("free", "proc", "free | awk 'NR == 1 {print $1, $2, $3} NR == 2 {print $1, ($2 > 0)}'",
       gap=PROC_FORK),
    sh("df", "proc", "df -k / | awk 'NR == 1 {print $1, $2} NR == 2 {print ($2 > 0)}'",
       gap=PROC_FORK),
    sh("mount", "proc", "mount | awk '$3 == \"/proc\" {print $1, $2, $3, $4, $5}'", gap=PROC_FORK),
]

FPU: list[Case] = [
    *prog("fpu", "double", "fpu", gap_i386=FPU_INIT),
    *prog("fpu", "ldouble", "fpu", gap=FPU_INIT),
    *prog("fpu", "fenv", "fpu", gap=FPU_INIT),
    *prog("fpu", "control", "fpu", gap=FPU_INIT),
]

SCRIPTS: list[Case] = [
    sh("read-loop", "scripts", 'while read a b; do echo "$b:$a"; done; echo end',
       stdin=b"one 1\ntwo 2\nthree 3\n"),
    sh("heredoc", "scripts", "x=world; cat <<EOF\nhello $x\n$((2+3))\nEOF\n", gap=FORK),
    sh("heredoc-builtin", "scripts",
       "while read l; do echo \"<$l>\"; done <<EOF\nfirst\nsecond\nEOF\n"),
    sh("tar", "scripts",
       "mkdir -p /tmp/d/sub && echo hi > /tmp/d/sub/f && echo top > /tmp/d/g && "
       "tar czf /tmp/d.tgz -C /tmp d && mkdir /tmp/x && tar xzf /tmp/d.tgz -C /tmp/x && "
       "find /tmp/x | sort && cat /tmp/x/d/sub/f /tmp/x/d/g && tar tzf /tmp/d.tgz | sort",
       gap=FORK),
    sh("zcat", "scripts", "zcat /data/notes.gz; gzip -c /data/input.txt | zcat | sort",
       files=INPUT, gap=FORK),
    sh("time", "scripts", "time sleep 0.05 2>&1; echo done", gap=FORK,
       diffs=(DIGITS,)),
    sh("wait-none", "scripts", "wait; echo nothing to wait for $?"),
    sh("case-loop", "scripts",
       "for f in a.txt b.c c; do case $f in *.txt) echo text;; *.c) echo c;; *) echo other;; "
       "esac; done"),
    sh("read-loop", "scripts", 'while IFS=: read -r a b; do echo "$b=$a"; done',
       stdin=b"x:1\ny:2\n", shell="bash"),
    sh("heredoc", "scripts", "cat <<'EOF'\nno $expansion\nEOF\n", shell="bash", gap=FORK),
    sh("arrays", "scripts", "a=(one two three); echo ${#a[@]} ${a[1]}; declare -A m; m[k]=v; "
       "echo ${m[k]}", shell="bash"),
    sh("time", "scripts", "TIMEFORMAT='real %R'; time sleep 0.05",
       shell="bash", gap=FORK),
    sh("wait", "scripts", "sleep 0.05 & sleep 0.05 & wait; echo all done", shell="bash",
       gap=FORK),
    sh("read-loop", "scripts", 'while read a b; do print -r -- "$b/$a"; done',
       stdin=b"one 1\ntwo 2\n", shell="zsh"),
    sh("globs", "scripts", "print -l /data/**/*.txt", files=INPUT, shell="zsh"),
    sh("heredoc", "scripts", "cat <<EOF\nzsh $((1+1))\nEOF\n", shell="zsh",
       gap=FORK, reference="native", reason=QEMU_ZSH),
    sh("zcat", "scripts", "zcat /data/notes.gz | wc -l", files=INPUT, shell="zsh",
       gap=FORK, reference="native", reason=QEMU_ZSH),
]

CASES: list[Case] = [*PROCESSES, *SIGNALS, *BLOCKING, *FILES, *PROCFS, *FPU, *SCRIPTS]
