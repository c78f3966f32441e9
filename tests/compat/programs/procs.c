/* Processes: fork/vfork/execve/wait*, sessions and groups, system(), posix_spawn. */
#include "common.h"
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/times.h>
#include <sys/wait.h>

extern char **environ;

static void show(const char *what, int st) {
    if (WIFEXITED(st)) printf("%s: exited %d\n", what, WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) printf("%s: killed by %d\n", what, WTERMSIG(st));
    else printf("%s: status %#x\n", what, st);
}

static int t_fork_wait(int argc, char **argv) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (pid == 0) { printf("child runs\n"); fflush(stdout); _exit(7); }
    int st;
    pid_t got = waitpid(pid, &st, 0);
    printf("waited right child: %d\n", got == pid);
    show("child", st);
    CALL("again", waitpid(pid, &st, 0));
    return 0;
}

static int t_vfork(int argc, char **argv) {
    volatile int shared = 1;
    fflush(stdout);
    pid_t pid = vfork();
    if (pid < 0) { printf("vfork: %s\n", ename(errno)); return 1; }
    if (pid == 0) { shared = 2; _exit(3); }
    int st;
    waitpid(pid, &st, 0);
    printf("parent sees child's write: %d\n", shared);
    show("vfork child", st);
    pid = vfork();
    if (pid == 0) {
        char *args[] = {"procs", "echoargs", "via", "vfork", NULL};
        execve("/bin/procs", args, environ);
        _exit(127);
    }
    waitpid(pid, &st, 0);
    show("vfork+exec child", st);
    return 0;
}

static int t_echoargs(int argc, char **argv) {
    for (int i = 1; i < argc; i++) printf("arg[%d]=%s\n", i, argv[i]);
    printf("X=%s\n", getenv("X") ? getenv("X") : "(unset)");
    return argc;
}

static int t_execve(int argc, char **argv) {
    char *bad[] = {"nope", NULL};
    CALL("missing", execve("/bin/does-not-exist", bad, environ));
    char *args[] = {"procs", "echoargs", "a", "b c", NULL};
    char *env[] = {"X=1", NULL};
    fflush(stdout);
    execve("/bin/procs", args, env);
    printf("execve failed: %s\n", ename(errno));
    return 1;
}

static int t_wait4(int argc, char **argv) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (pid == 0) { for (;;) pause(); }
    kill(pid, SIGKILL);
    int st;
    struct rusage ru;
    memset(&ru, 0xff, sizeof ru);
    pid_t got = wait4(pid, &st, 0, &ru);
    printf("wait4 right child: %d\n", got == pid);
    show("killed child", st);
    printf("rusage filled: %d\n", ru.ru_utime.tv_sec >= 0 && ru.ru_maxrss >= 0);
    pid = fork();
    if (pid == 0) _exit(42);
    while ((got = wait4(-1, &st, WNOHANG, NULL)) == 0) usleep(1000);
    show("WNOHANG loop", st);
    CALL("no children", wait4(-1, &st, 0, NULL));
    return 0;
}

static int t_waitid(int argc, char **argv) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (pid == 0) _exit(4);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = waitid(P_PID, pid, &si, WEXITED);
    printf("waitid %d signo %d code %s status %d pid ok %d\n", r, si.si_signo,
           si.si_code == CLD_EXITED ? "CLD_EXITED" : "other", si.si_status, si.si_pid == pid);
    return 0;
}

static int t_getppid(int argc, char **argv) {
    pid_t me = getpid();
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (pid == 0) {
        printf("child's parent is me: %d\n", getppid() == me);
        printf("child pid differs: %d\n", getpid() != me);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    printf("pids positive: %d\n", me > 0 && pid > 0);
    return 0;
}

/* The middle process waits until the grandchild has read its first parent, so the check
 * does not depend on which of them runs first after the fork (on Linux either may). */
static int t_orphan(int argc, char **argv) {
    int fds[2], seen[2];
    pipe(fds);
    pipe(seen);
    fflush(stdout);
    pid_t mid = fork();
    if (mid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (mid == 0) {
        pid_t me = getpid();
        pid_t gc = fork();
        if (gc == 0) {
            pid_t first = getppid();
            write(seen[1], "s", 1);
            double end = now_s() + 5;
            while (getppid() == first && now_s() < end) usleep(1000);
            char msg[80];
            int n = snprintf(msg, sizeof msg, "first parent is the middle: %d, reparented: %d, "
                             "to pid 1: %d\n", first == me, getppid() != first,
                             getppid() == 1);
            write(fds[1], msg, n);
            _exit(0);
        }
        char c;
        read(seen[0], &c, 1);
        _exit(0);
    }
    close(fds[1]);
    close(seen[1]);
    int st;
    waitpid(mid, &st, 0);
    show("middle", st);
    char buf[128];
    int n = read(fds[0], buf, sizeof buf);
    if (n > 0) fwrite(buf, 1, n, stdout);
    return 0;
}

static int t_setsid(int argc, char **argv) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (pid == 0) {
        pid_t sid = setsid();
        printf("setsid is pid: %d\n", sid == getpid());
        printf("getsid(0)==pid: %d pgrp==pid: %d\n", getsid(0) == getpid(), getpgrp() == getpid());
        CALL("second setsid", setsid());
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    show("child", st);
    return 0;
}

static int t_killpg(int argc, char **argv) {
    int fds[2];
    pipe(fds);
    pid_t kids[2];
    fflush(stdout);
    for (int i = 0; i < 2; i++) {
        kids[i] = fork();
        if (kids[i] < 0) { printf("fork: %s\n", ename(errno)); return 1; }
        if (kids[i] == 0) {
            setpgid(0, i == 0 ? 0 : kids[0]);
            write(fds[1], "r", 1);
            for (;;) pause();
        }
        setpgid(kids[i], kids[0]);   /* both sides, as shells do: no race */
    }
    char c;
    for (int i = 0; i < 2; i++) read(fds[0], &c, 1);
    printf("same group: %d\n", getpgid(kids[1]) == kids[0]);
    printf("killpg: %d\n", killpg(kids[0], SIGTERM));
    for (int i = 0; i < 2; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        show(i ? "second" : "first", st);
    }
    CALL("group gone", kill(-kids[0], 0));
    return 0;
}

static int t_system(int argc, char **argv) {
    fflush(stdout);
    int st = system("echo from system; exit 3");
    show("system", st);
    st = system("echo $((6*7)) | tr 4 x");
    show("system pipeline", st);
    return 0;
}

static int t_spawn(int argc, char **argv) {
    pid_t pid;
    char *args[] = {"echo", "spawned", "echo", NULL};
    fflush(stdout);
    int r = posix_spawn(&pid, "/bin/echo", NULL, NULL, args, environ);
    int st = 0;
    if (r == 0) waitpid(pid, &st, 0);     /* print after the child's line: a fixed order */
    printf("posix_spawn: %d\n", r);
    if (r) return 1;
    show("echo", st);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/tmp/out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char *args2[] = {"sh", "-c", "echo redirected; exit 5", NULL};
    r = posix_spawnp(&pid, "sh", &fa, NULL, args2, environ);
    waitpid(pid, &st, 0);
    show("spawnp sh", st);
    char buf[64] = {0};
    int fd = open("/tmp/out", O_RDONLY);
    read(fd, buf, sizeof buf - 1);
    printf("file: %s", buf);
    r = posix_spawn(&pid, "/bin/missing", NULL, NULL, args, environ);
    printf("missing: %s\n", ename(r));
    return 0;
}

/* -- CPU accounting ------------------------------------------------------------------- */
static const char *yes(int b) { return b ? "yes" : "no"; }
static long tv_us(struct timeval tv) { return tv.tv_sec * 1000000L + tv.tv_usec; }

/* Burn user CPU for about `seconds` of wall time. */
static void burn(double seconds) {
    volatile unsigned long x = 0;
    double end = now_s() + seconds;
    while (now_s() < end)
        for (int i = 0; i < 100000; i++) x += i;
}

static int t_rusage(int argc, char **argv) {
    struct rusage before, ru, after;
    struct tms tb, ta;
    getrusage(RUSAGE_CHILDREN, &before);
    times(&tb);
    int fds[2];
    pipe(fds);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (pid == 0) {
        burn(0.3);
        struct rusage self, thread;
        struct tms t;
        getrusage(RUSAGE_SELF, &self);
        getrusage(RUSAGE_THREAD, &thread);
        times(&t);
        printf("child: self utime>0 %s thread utime>0 %s times utime>0 %s maxrss>0 %s\n",
               yes(tv_us(self.ru_utime) > 0), yes(tv_us(thread.ru_utime) > 0),
               yes(t.tms_utime > 0), yes(self.ru_maxrss > 0));
        fflush(stdout);
        write(fds[1], "x", 1);
        _exit(0);
    }
    char c;
    read(fds[0], &c, 1);
    usleep(20000);
    getrusage(RUSAGE_CHILDREN, &ru);
    printf("unreaped child not counted: %s\n", yes(tv_us(ru.ru_utime) == tv_us(before.ru_utime)));
    int st;
    memset(&ru, 0, sizeof ru);
    pid_t got = wait4(pid, &st, 0, &ru);
    printf("wait4 right child %s: utime>0 %s maxrss>0 %s\n", yes(got == pid),
           yes(tv_us(ru.ru_utime) > 0), yes(ru.ru_maxrss > 0));
    getrusage(RUSAGE_CHILDREN, &after);
    times(&ta);
    printf("RUSAGE_CHILDREN utime grew %s maxrss>0 %s; times cutime grew %s\n",
           yes(tv_us(after.ru_utime) > tv_us(before.ru_utime)), yes(after.ru_maxrss > 0),
           yes(ta.tms_cutime > tb.tms_cutime));
    printf("children's time covers the child's: %s\n",
           yes(tv_us(after.ru_utime) + 10000 >= tv_us(ru.ru_utime)));
    CALL("bad who", getrusage(-2, &ru));
    return 0;
}

/* A child that burns nothing itself but reaps a grandchild that burned: its parent sees
 * the grandchild's time in wait4's rusage (self + reaped children) and in its children. */
static int t_rusage_tree(int argc, char **argv) {
    struct rusage before, ru, after;
    getrusage(RUSAGE_CHILDREN, &before);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (pid == 0) {
        pid_t gc = fork();
        if (gc == 0) { burn(0.3); _exit(0); }
        struct rusage mine;
        siginfo_t si;
        /* waitid's own rusage argument (the raw syscall: glibc's waitid has none) */
        memset(&mine, 0, sizeof mine);
        long r = syscall(SYS_waitid, P_PID, gc, &si, WEXITED, &mine);
        printf("waitid rusage: r %ld utime>=50ms %s\n", r, yes(tv_us(mine.ru_utime) >= 50000));
        struct rusage kids;
        getrusage(RUSAGE_CHILDREN, &kids);
        printf("middle's children utime>=50ms %s\n", yes(tv_us(kids.ru_utime) >= 50000));
        fflush(stdout);
        _exit(0);
    }
    int st;
    wait4(pid, &st, 0, &ru);
    getrusage(RUSAGE_CHILDREN, &after);
    printf("wait4 counts the grandchild: %s\n", yes(tv_us(ru.ru_utime) >= 50000));
    printf("RUSAGE_CHILDREN counts the grandchild: %s\n",
           yes(tv_us(after.ru_utime) - tv_us(before.ru_utime) >= 50000));
    return 0;
}

/* -- stopped and continued children ----------------------------------------------------- */
static void show_job(const char *what, int st) {
    if (WIFSTOPPED(st)) printf("%s: stopped by %d (status %#x)\n", what, WSTOPSIG(st), st);
    else if (WIFCONTINUED(st)) printf("%s: continued (status %#x)\n", what, st);
    else show(what, st);
}

static pid_t pausing_child(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);             /* its own group (not orphaned: SIGTSTP stops it) */
        for (;;) pause();
    }
    if (pid > 0) setpgid(pid, pid);
    return pid;
}

static int t_stop_wait(int argc, char **argv) {
    pid_t pid = pausing_child();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    int st = 0;
    kill(pid, SIGSTOP);
    pid_t got = waitpid(pid, &st, WUNTRACED);    /* blocks until the child has stopped */
    printf("WUNTRACED right child: %s\n", yes(got == pid));
    show_job("after SIGSTOP", st);
    CALL("stop reported once", waitpid(pid, &st, WUNTRACED | WNOHANG));
    CALL("no WUNTRACED: nothing", waitpid(pid, &st, WNOHANG));
    kill(pid, SIGCONT);
    got = waitpid(pid, &st, WCONTINUED);
    printf("WCONTINUED right child: %s\n", yes(got == pid));
    show_job("after SIGCONT", st);
    CALL("continue reported once", waitpid(pid, &st, WCONTINUED | WNOHANG));
    /* a stop nobody waited for is replaced by the continue that ends it */
    kill(pid, SIGSTOP);
    siginfo_t si;
    waitid(P_PID, pid, &si, WSTOPPED | WNOWAIT);
    kill(pid, SIGCONT);
    got = waitpid(pid, &st, WUNTRACED | WCONTINUED);
    show_job("stop then continue, one wait", st);
    kill(pid, SIGTSTP);
    waitpid(pid, &st, WUNTRACED);
    show_job("after SIGTSTP", st);
    kill(pid, SIGTERM);                    /* waits while stopped... */
    usleep(20000);
    CALL("SIGTERM to a stopped child: still there", waitpid(pid, &st, WNOHANG));
    kill(pid, SIGCONT);                    /* ...and kills it once continued */
    waitpid(pid, &st, 0);
    show_job("continued into SIGTERM", st);
    pid = pausing_child();
    kill(pid, SIGSTOP);
    waitpid(pid, &st, WUNTRACED);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    show_job("SIGKILL while stopped", st);
    return 0;
}

static void show_si(const char *what, int r, siginfo_t *si, pid_t pid) {
    const char *code = si->si_code == CLD_STOPPED ? "CLD_STOPPED"
        : si->si_code == CLD_CONTINUED ? "CLD_CONTINUED" : si->si_code == CLD_KILLED
        ? "CLD_KILLED" : si->si_code == CLD_EXITED ? "CLD_EXITED" : "other";
    if (r < 0) { printf("%s: -1 %s\n", what, ename(errno)); return; }
    if (si->si_pid == 0) { printf("%s: %d, nothing (si_pid 0)\n", what, r); return; }
    printf("%s: %d signo %d %s status %d pid ok %s\n", what, r, si->si_signo, code,
           si->si_status, yes(si->si_pid == pid));
}

static int t_stop_waitid(int argc, char **argv) {
    pid_t pid = pausing_child();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    siginfo_t si;
    int r;
    kill(pid, SIGSTOP);
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, pid, &si, WSTOPPED | WNOWAIT);
    show_si("WSTOPPED|WNOWAIT", r, &si, pid);
    memset(&si, 0, sizeof si);
    r = waitid(P_ALL, 0, &si, WSTOPPED);
    show_si("WSTOPPED again", r, &si, pid);
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, pid, &si, WSTOPPED | WNOHANG);
    show_si("WSTOPPED|WNOHANG", r, &si, pid);
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, pid, &si, WEXITED | WNOHANG);
    show_si("WEXITED|WNOHANG (stopped)", r, &si, pid);
    kill(pid, SIGCONT);
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, pid, &si, WCONTINUED | WNOWAIT);
    show_si("WCONTINUED|WNOWAIT", r, &si, pid);
    memset(&si, 0, sizeof si);
    r = waitid(P_PGID, pid, &si, WCONTINUED | WSTOPPED);
    show_si("WCONTINUED", r, &si, pid);
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, pid, &si, WCONTINUED | WNOHANG);
    show_si("WCONTINUED|WNOHANG", r, &si, pid);
    CALL("no event bits", waitid(P_PID, pid, &si, WNOHANG));
    CALL("unknown bits", waitid(P_PID, pid, &si, WEXITED | 0x100));
    kill(pid, SIGKILL);
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, pid, &si, WEXITED);
    show_si("WEXITED", r, &si, pid);
    /* an exited child is not what WSTOPPED|WCONTINUED asks for */
    fflush(stdout);
    pid = fork();
    if (pid == 0) _exit(3);
    waitid(P_PID, pid, &si, WEXITED | WNOWAIT);
    CALL("WSTOPPED|WCONTINUED, child exited", waitid(P_PID, pid, &si, WSTOPPED | WCONTINUED | WNOHANG));
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, pid, &si, WEXITED);
    show_si("then WEXITED", r, &si, pid);
    return 0;
}

static void on_chld(int sig) {}

static void take_chld(const char *what, pid_t pid, long ms) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = sigtimedwait(&set, &si, &ts);
    if (r < 0) { printf("%s: SIGCHLD none (%s)\n", what, ename(errno)); return; }
    show_si(what, r, &si, pid);
}

static int t_stop_sigchld(int argc, char **argv) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int st;
    pid_t pid = pausing_child();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    kill(pid, SIGSTOP);
    waitpid(pid, &st, WUNTRACED);
    take_chld("stop", pid, 2000);
    kill(pid, SIGCONT);
    waitpid(pid, &st, WCONTINUED);
    take_chld("continue", pid, 2000);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    kill(pid, SIGSTOP);
    waitpid(pid, &st, WUNTRACED);
    take_chld("SA_NOCLDSTOP stop", pid, 100);
    kill(pid, SIGCONT);
    waitpid(pid, &st, WCONTINUED);
    take_chld("SA_NOCLDSTOP continue", pid, 100);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    take_chld("SA_NOCLDSTOP kill", pid, 2000);
    return 0;
}

static struct subtest tests[] = {
    {"fork_wait", t_fork_wait}, {"vfork", t_vfork}, {"echoargs", t_echoargs},
    {"execve", t_execve}, {"wait4", t_wait4}, {"waitid", t_waitid}, {"getppid", t_getppid},
    {"orphan", t_orphan}, {"setsid", t_setsid}, {"killpg", t_killpg}, {"system", t_system},
    {"spawn", t_spawn}, {"rusage", t_rusage}, {"rusage_tree", t_rusage_tree},
    {"stop_wait", t_stop_wait}, {"stop_waitid", t_stop_waitid},
    {"stop_sigchld", t_stop_sigchld},
};
RUN_SUBTESTS(tests)
