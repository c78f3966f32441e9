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
QEMU_VFORK = ("qemu-user runs vfork and CLONE_VFORK as a fork: the child's stores and "
              "posix_spawn's exec error are lost to the parent")
QEMU_ZSH = "zsh-static as pid 1 under qemu-user hangs once it forks or takes a signal"
QEMU_NOCLDSTOP = ("qemu-user sends SIGCHLD for a stopped or continued child even when the "
                  "parent's SIGCHLD action has SA_NOCLDSTOP")
QEMU_INIT = ("the guest is pid 1 (as in a partition): the kernel drops a default-action signal "
             "sent to init, and qemu-user, re-raising it on itself to die, then hangs")
QEMU_CTRUNC = "qemu-user does not report MSG_CTRUNC when SCM_RIGHTS descriptors are cut off"
QEMU_SIGNAL32 = ("qemu-user hangs delivering to a handler installed with i386 signal(2) (no "
                 "SA_RESTORER)")
QEMU_OLDMASK = ("qemu-user's i386 sigprocmask(SIG_SETMASK) replaces the whole mask; Linux "
                "replaces only the low 32 signals")
QEMU_SIGSUSPEND32 = ("qemu-user reads i386 sigsuspend's mask through a pointer (EFAULT); "
                     "Linux takes it by value as the third argument")

# Why cases fail today (measured against the runtime when the marker was set): none now. A
# new gap gets a named reason here and ``gap=`` / ``gap_i386=`` on its cases.


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
    sh("pipeline", "processes", "echo c b a | tr ' ' '\\n' | sort | wc -l"),
    sh("cmdsubst", "processes", 'x=$(echo inner; echo two); echo "[$x]"'),
    sh("subshell", "processes", "(cd /tmp && pwd); pwd; (exit 4); echo rc=$?"),
    sh("bg-wait", "processes", "sleep 0.1 & echo started; wait $!; echo waited $?"),
    sh("two-externals", "processes", "cat /data/input.txt; wc -l /data/input.txt",
       files=INPUT),
    sh("find-exec", "processes", "find /data -name '*.txt' -exec wc -c {} \\; | sort",
       files=INPUT),
    sh("xargs", "processes", "printf '1\\n2\\n3\\n' | xargs -n1 echo n"),
    sh("timeout", "processes", "timeout 1 sleep 5; echo rc=$?; timeout 5 true; echo rc=$?"),
    sh("env-cmd", "processes", "env -i A=1 B=2 env; env X=y sh -c 'echo $X'"),
    sh("awk-pipe", "processes",
       "awk 'BEGIN { print \"b\\na\\nc\" | \"sort\"; close(\"sort\"); print \"done\" }'"),
    sh("exit-status", "processes", "false; echo $?; ! true; echo $?; sh -c 'exit 9'; echo $?"),
    sh("pipeline", "processes", "echo c b a | tr ' ' '\\n' | sort; echo ${PIPESTATUS[@]}",
       shell="bash"),
    sh("cmdsubst", "processes", 'x=$(echo inner); y=`echo back`; echo "$x $y"',
       shell="bash"),
    sh("bg-wait", "processes", "(sleep 0.1; exit 6) & wait $!; echo waited $?",
       shell="bash"),
    sh("pipeline", "processes", "echo c b a | tr ' ' '\\n' | sort -r", shell="zsh",
       reference="native", reason=QEMU_ZSH),
    sh("cmdsubst", "processes", 'print -- "$(echo zsh inner)"', shell="zsh",
       reference="native", reason=QEMU_ZSH),
    # sash -c runs "echo x; exit 3" through /bin/sh and exits 0 (sash ignores the code); from
    # stdin as pid 1 sash also exits 0. Linux and qemu-user agree: the reference is the truth.
    sh("exit", "processes", "echo x; exit 3", shell="sash"),
    Case("sash-stdin-exit", "processes", "sash", (), stdin=b"echo x\nexit 3\n"),
    sh("external", "processes", "echo before; /bin/echo external", shell="sash"),
    *prog("procs", "fork_wait", "processes"),
    *prog("procs", "vfork", "processes", reference="native", reason=QEMU_VFORK),
    *prog("procs", "execve", "processes"),
    *prog("procs", "wait4", "processes"),
    *prog("procs", "waitid", "processes"),
    *prog("procs", "getppid", "processes"),
    *prog("procs", "orphan", "processes"),
    *prog("procs", "setsid", "processes"),
    *prog("procs", "killpg", "processes"),
    *prog("procs", "system", "processes"),
    *prog("procs", "spawn", "processes",
          reference="native", reason=QEMU_VFORK),
    *prog("procs", "rusage", "processes"),
    *prog("procs", "rusage_tree", "processes"),
    *prog("procs", "stop_wait", "processes"),
    *prog("procs", "stop_waitid", "processes"),
    *prog("procs", "stop_sigchld", "processes", reference="native",
          reason=QEMU_NOCLDSTOP),
]

SIGNALS: list[Case] = [
    *prog("signals", "handler", "signals"),
    *prog("signals", "siginfo", "signals"),
    *prog("signals", "resethand", "signals",
          reference="native", reason=QEMU_INIT),
    *prog("signals", "nodefer", "signals"),
    *prog("signals", "pending", "signals"),
    *prog("signals", "ignored", "signals"),
    *prog("signals", "altstack", "signals"),
    *prog("signals", "alarm", "signals"),
    *prog("signals", "itimer", "signals", timeout=3),
    *prog("signals", "sigsuspend", "signals"),
    *prog("signals", "sigtimedwait", "signals"),
    *prog("signals", "siglongjmp", "signals"),
    *prog("signals", "segv", "signals"),
    *prog("signals", "fpe", "signals"),
    *prog("signals", "eintr", "signals"),
    *prog("signals", "sigpipe", "signals",
          reference="native", reason=QEMU_INIT),
    *prog("signals", "default", "signals", "15", reference="native", reason=QEMU_INIT),
    *prog("signals", "child_status", "signals"),
    *prog("signals", "pollmask", "signals"),
    *prog("signals", "stop_waits", "signals"),
    *prog("legacy32", "sigaction", "signals", archs=("i386",)),
    *prog("legacy32", "signal", "signals", archs=("i386",), reference="native",
          reason=QEMU_SIGNAL32),
    *prog("legacy32", "masks", "signals", archs=("i386",), reference="native",
          reason=QEMU_OLDMASK),
    *prog("legacy32", "sigsuspend", "signals", archs=("i386",), timeout=5,
          reference="native", reason=QEMU_SIGSUSPEND32),
    sh("kill-self", "signals", "echo before; kill -TERM $$; echo after",
       reference="native", reason=QEMU_INIT),
    sh("kill-child", "signals", "sh -c 'kill -KILL $$'; echo rc=$?"),
    sh("trap-exit", "signals", "trap 'echo t' EXIT; echo body"),
    sh("trap-int", "signals", "trap 'echo caught' INT; kill -INT $$; echo after"),
    sh("trap-exit", "signals", "trap 'echo t' EXIT; echo body; exit 2", shell="bash"),
    sh("trap-int", "signals", "trap 'echo caught INT' INT; kill -INT $$; echo after",
       shell="bash"),
    sh("sigpipe", "signals", "yes | head -n 2; echo ${PIPESTATUS[@]}", shell="bash"),
    sh("trap-exit", "signals", "trap 'echo t' EXIT; echo body", shell="zsh"),
    sh("trap-int", "signals", "trap 'echo caught' INT; kill -INT $$; echo after",
       shell="zsh", reference="native", reason=QEMU_ZSH),
]

BLOCKING: list[Case] = [
    *prog("blockio", "pipe1m", "blocking-io"),
    *prog("blockio", "readblock", "blocking-io"),
    *prog("blockio", "writeblock", "blocking-io"),
    *prog("blockio", "pipebuf", "blocking-io"),
    *prog("blockio", "poll", "blocking-io"),
    *prog("blockio", "pollhup", "blocking-io"),
    *prog("blockio", "select", "blocking-io"),
    *prog("blockio", "epoll", "blocking-io"),
    *prog("blockio", "eventfd", "blocking-io"),
    *prog("blockio", "sp_stream", "blocking-io", timeout=3),
    *prog("blockio", "sp_dgram", "blocking-io"),
    *prog("blockio", "unix_bind", "blocking-io", timeout=3),
    *prog("blockio", "mkfifo", "blocking-io"),
    *prog("blockio", "pipe2nb", "blocking-io"),
    *prog("blockio", "write_intr", "blocking-io", timeout=5),
    *prog("unixfd", "dgram", "blocking-io"),
    *prog("unixfd", "stream", "blocking-io", reference="native", reason=QEMU_CTRUNC),
    *prog("unixfd", "fork", "blocking-io"),
    *prog("unixfd", "unreceived", "blocking-io"),
]

FILES: list[Case] = [
    *prog("files", "chmod", "files"),
    *prog("files", "umask", "files"),
    *prog("files", "chown", "files"),
    *prog("files", "utimensat", "files"),
    *prog("files", "link", "files"),
    *prog("files", "symlinkat", "files"),
    *prog("files", "renameat2", "files"),
    *prog("files", "fallocate", "files"),
    *prog("files", "mmap_shared", "files"),
    *prog("files", "msync", "files"),
    sh("chmod-ls", "files", "touch /tmp/f; chmod 750 /tmp/f; ls -l /tmp/f | cut -c1-10"),
]

PROCFS: list[Case] = [
    *prog("procfs", "stat", "proc", reference="native", reason=QEMU_PROC),
    *prog("procfs", "status", "proc", reference="native", reason=QEMU_PROC),
    *prog("procfs", "cmdline", "proc", "a b", "", "c"),
    *prog("procfs", "maps", "proc", reference="native",
          reason="qemu-user's emulated /proc/self/maps shows guest code as r--p (not r-xp)"),
    *prog("procfs", "fd", "proc"),
    *prog("procfs", "exe", "proc"),
    *prog("procfs", "cwd", "proc"),
    *prog("procfs", "rusage", "proc"),
    *prog("procfs", "times", "proc"),
    *prog("procfs", "stat_times", "proc", reference="native",
          reason=QEMU_PROC),
    *prog("procfs", "personality", "proc"),
    *prog("procfs", "resuid", "proc"),
    sh("meminfo", "proc", "grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo",
       diffs=(KB, Diff(r" +", " ", "column padding follows the numbers' widths"))),
    sh("cpuinfo", "proc",
       "echo processors $(grep -c ^processor /proc/cpuinfo); "
       "grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\\n' | grep -x -E 'fpu|sse2|cx8' | sort",
       diffs=(NPROC,)),
    sh("mounts", "proc", "awk '$2 == \"/proc\" {print $1, $2, $3}' /proc/mounts"),
    sh("uptime", "proc", "awk '{print NF, ($1 > 0), ($2 >= 0)}' /proc/uptime"),
    sh("loadavg", "proc",
       "grep -c -E '^[0-9]+[.][0-9]{2} [0-9]+[.][0-9]{2} [0-9]+[.][0-9]{2} [0-9]+/[0-9]+ "
       "[0-9]+$' /proc/loadavg"),
    sh("self-status", "proc", "grep -E '^(Name|State):' /proc/self/status",
       reference="native", reason="qemu-user names a child exec'd through /proc/self/exe after "
       "the guest binary (busybox), Linux after argv[0] (grep)"),
    sh("ps", "proc", "ps -o pid,comm | awk 'NR == 1 {print} $2 == \"ps\" {print \"ps listed\"}'",
       reference="native", reason=QEMU_PS),
    sh("free", "proc", "free | awk 'NR == 1 {print $1, $2, $3} NR == 2 {print $1, ($2 > 0)}'"),
    sh("df", "proc", "df -k / | awk 'NR == 1 {print $1, $2} NR == 2 {print ($2 > 0)}'"),
    sh("mount", "proc", "mount | awk '$3 == \"/proc\" {print $1, $2, $3, $4, $5}'"),
]

FPU: list[Case] = [
    *prog("fpu", "double", "fpu"),
    *prog("fpu", "ldouble", "fpu"),
    *prog("fpu", "fenv", "fpu"),
    *prog("fpu", "control", "fpu"),
]

SCRIPTS: list[Case] = [
    sh("read-loop", "scripts", 'while read a b; do echo "$b:$a"; done; echo end',
       stdin=b"one 1\ntwo 2\nthree 3\n"),
    sh("heredoc", "scripts", "x=world; cat <<EOF\nhello $x\n$((2+3))\nEOF\n"),
    sh("heredoc-builtin", "scripts",
       "while read l; do echo \"<$l>\"; done <<EOF\nfirst\nsecond\nEOF\n"),
    sh("tar", "scripts",
       "mkdir -p /tmp/d/sub && echo hi > /tmp/d/sub/f && echo top > /tmp/d/g && "
       "tar czf /tmp/d.tgz -C /tmp d && mkdir /tmp/x && tar xzf /tmp/d.tgz -C /tmp/x && "
       "find /tmp/x | sort && cat /tmp/x/d/sub/f /tmp/x/d/g && tar tzf /tmp/d.tgz | sort"),
    sh("zcat", "scripts", "zcat /data/notes.gz; gzip -c /data/input.txt | zcat | sort",
       files=INPUT),
    sh("time", "scripts", "time sleep 0.05 2>&1; echo done",
       diffs=(DIGITS,)),
    sh("wait-none", "scripts", "wait; echo nothing to wait for $?"),
    sh("case-loop", "scripts",
       "for f in a.txt b.c c; do case $f in *.txt) echo text;; *.c) echo c;; *) echo other;; "
       "esac; done"),
    sh("read-loop", "scripts", 'while IFS=: read -r a b; do echo "$b=$a"; done',
       stdin=b"x:1\ny:2\n", shell="bash"),
    sh("heredoc", "scripts", "cat <<'EOF'\nno $expansion\nEOF\n", shell="bash"),
    sh("arrays", "scripts", "a=(one two three); echo ${#a[@]} ${a[1]}; declare -A m; m[k]=v; "
       "echo ${m[k]}", shell="bash"),
    sh("time", "scripts", "TIMEFORMAT='real %R'; time sleep 0.05",
       shell="bash"),
    sh("wait", "scripts", "sleep 0.05 & sleep 0.05 & wait; echo all done", shell="bash"),
    sh("read-loop", "scripts", 'while read a b; do print -r -- "$b/$a"; done',
       stdin=b"one 1\ntwo 2\n", shell="zsh"),
    sh("globs", "scripts", "print -l /data/**/*.txt", files=INPUT, shell="zsh"),
    sh("heredoc", "scripts", "cat <<EOF\nzsh $((1+1))\nEOF\n", shell="zsh",
       reference="native", reason=QEMU_ZSH),
    sh("zcat", "scripts", "zcat /data/notes.gz | wc -l", files=INPUT, shell="zsh",
       reference="native", reason=QEMU_ZSH),
]

CASES: list[Case] = [*PROCESSES, *SIGNALS, *BLOCKING, *FILES, *PROCFS, *FPU, *SCRIPTS]
