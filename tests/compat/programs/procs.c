/* Processes: fork/vfork/execve/wait*, sessions and groups, system(), posix_spawn. */
#include "common.h"
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
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

static struct subtest tests[] = {
    {"fork_wait", t_fork_wait}, {"vfork", t_vfork}, {"echoargs", t_echoargs},
    {"execve", t_execve}, {"wait4", t_wait4}, {"waitid", t_waitid}, {"getppid", t_getppid},
    {"orphan", t_orphan}, {"setsid", t_setsid}, {"killpg", t_killpg}, {"system", t_system},
    {"spawn", t_spawn},
};
RUN_SUBTESTS(tests)
