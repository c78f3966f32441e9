/* /proc/self/... as programs parse it, and the process-accounting calls. */
#include "common.h"
#include <dirent.h>
#include <fcntl.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/times.h>
#include <sys/wait.h>

static char text[1 << 16];

static int slurp(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("open %s: %s\n", path, ename(errno)); return -1; }
    int n = 0, r;
    while ((r = read(fd, text + n, sizeof text - 1 - n)) > 0) n += r;
    text[n] = 0;
    close(fd);
    return n;
}

static int t_stat(int argc, char **argv) {
    if (slurp("/proc/self/stat") < 0) return 1;
    int pid, ppid, pgrp, session;
    char comm[64], state;
    sscanf(text, "%d %63s %c %d %d %d", &pid, comm, &state, &ppid, &pgrp, &session);
    char *close_paren = strrchr(text, ')');
    int fields = 2;
    long threads = -1, vsize = -1;
    for (char *t = strtok(close_paren + 1, " \n"); t; t = strtok(NULL, " \n")) {
        fields++;
        if (fields == 20) threads = atol(t);
        if (fields == 23) vsize = atol(t);
    }
    printf("pid ok %d comm %s state %c ppid ok %d pgrp ok %d\n", pid == getpid(), comm, state,
           ppid == getppid(), pgrp == getpgrp());
    printf("fields >= 52: %d threads %ld vsize > 0: %d\n", fields >= 52, threads, vsize > 0);
    return 0;
}

static int t_status(int argc, char **argv) {
    if (slurp("/proc/self/status") < 0) return 1;
    const char *keys[] = {"Name:", "State:", "Tgid:", "Pid:", "PPid:", "Uid:", "Gid:",
                          "Threads:", "VmRSS:", "SigBlk:", "SigIgn:"};
    for (unsigned i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char *line = strstr(text, keys[i]);
        if (!line || (line != text && line[-1] != '\n')) { printf("%s missing\n", keys[i]); continue; }
        char *end = strchr(line, '\n');
        if (strcmp(keys[i], "Pid:") == 0 || strcmp(keys[i], "Tgid:") == 0)
            printf("%s is getpid: %d\n", keys[i], atoi(line + strlen(keys[i])) == getpid());
        else if (strcmp(keys[i], "PPid:") == 0)
            printf("%s is getppid: %d\n", keys[i], atoi(line + strlen(keys[i])) == getppid());
        else if (strcmp(keys[i], "VmRSS:") == 0)
            printf("VmRSS: present, kB: %d\n", strstr(line, "kB") < end);
        else
            printf("%.*s\n", (int)(end - line), line);
    }
    return 0;
}

static int t_cmdline(int argc, char **argv) {
    int n = slurp("/proc/self/cmdline");
    printf("length %d:", n);
    for (int i = 0; i < n; i++) putchar(text[i] ? text[i] : '|');
    putchar('\n');
    return 0;
}

static int t_maps(int argc, char **argv) {
    if (slurp("/proc/self/maps") < 0) return 1;
    unsigned long me = (unsigned long)&t_maps, stack = (unsigned long)&argc;
    int exe_lines = 0, well_formed = 1;
    char code[300] = "none", stk[300] = "none";
    char *save;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        unsigned long lo, hi;
        char perms[8], path[256] = "";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255s", &lo, &hi, perms, path) < 3) {
            well_formed = 0;
            continue;
        }
        if (strcmp(path, "/bin/procfs") == 0) exe_lines++;
        if (me >= lo && me < hi) snprintf(code, sizeof code, "%s %s", perms, path);
        if (stack >= lo && stack < hi) snprintf(stk, sizeof stk, "%s %s", perms, path);
    }
    printf("well formed %d, exe mapped %d\n", well_formed, exe_lines > 0);
    printf("code in: %s\nstack in: %s\n", code, stk);
    return 0;
}

static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static int t_fd(int argc, char **argv) {
    int fd = open("/bin/procfs", O_RDONLY);
    int d = dup2(fd, 9);
    char link[64], target[256];
    snprintf(link, sizeof link, "/proc/self/fd/%d", d);
    ssize_t n = readlink(link, target, sizeof target - 1);
    printf("fd 9 -> %.*s\n", (int)(n > 0 ? n : 0), target);
    int p[2];
    pipe(p);
    snprintf(link, sizeof link, "/proc/self/fd/%d", p[0]);
    n = readlink(link, target, sizeof target - 1);
    printf("pipe looks like pipe:[N]: %d\n", n > 6 && strncmp(target, "pipe:[", 6) == 0);
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) { printf("opendir: %s\n", ename(errno)); return 1; }
    int fds[64], count = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && count < 64)
        if (e->d_name[0] != '.') fds[count++] = atoi(e->d_name);
    qsort(fds, count, sizeof fds[0], cmp);
    printf("fds:");
    for (int i = 0; i < count; i++) printf(" %d", fds[i]);
    printf("\n");
    int via = open("/proc/self/fd/9", O_RDONLY);
    char magic[4];
    read(via, magic, 4);
    printf("reopened via /proc: %.3s\n", magic + 1);
    return 0;
}

static int t_exe(int argc, char **argv) {
    char target[256];
    ssize_t n = readlink("/proc/self/exe", target, sizeof target - 1);
    printf("exe -> %.*s\n", (int)(n > 0 ? n : 0), target);
    int fd = open("/proc/self/exe", O_RDONLY);
    char magic[4] = {0};
    read(fd, magic, 4);
    printf("opens the ELF: %d\n", memcmp(magic, "\177ELF", 4) == 0);
    return 0;
}

static int t_cwd(int argc, char **argv) {
    char target[256];
    ssize_t n = readlink("/proc/self/cwd", target, sizeof target - 1);
    printf("cwd -> %.*s\n", (int)(n > 0 ? n : 0), target);
    chdir("/tmp");
    n = readlink("/proc/self/cwd", target, sizeof target - 1);
    printf("cwd -> %.*s\n", (int)(n > 0 ? n : 0), target);
    n = readlink("/proc/self/root", target, sizeof target - 1);
    printf("root -> %.*s\n", (int)(n > 0 ? n : 0), target);
    return 0;
}

static int t_rusage(int argc, char **argv) {
    volatile double x = 0;
    for (int i = 0; i < 3000000; i++) x += i;
    struct rusage ru;
    printf("getrusage: %d\n", getrusage(RUSAGE_SELF, &ru));
    printf("cpu time > 0: %d maxrss > 0: %d\n",
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec > 0,
           ru.ru_maxrss > 0);
    printf("children: %d\n", getrusage(RUSAGE_CHILDREN, &ru));
    printf("thread: %d\n", getrusage(RUSAGE_THREAD, &ru));
    CALL("bad who", getrusage(42, &ru));
    return 0;
}

static int t_times(int argc, char **argv) {
    struct tms t;
    clock_t c = times(&t);
    printf("CLK_TCK %ld\n", sysconf(_SC_CLK_TCK));
    printf("times ok %d children zero %d\n", c != (clock_t)-1, t.tms_cutime == 0 && t.tms_cstime == 0);
    printf("clock() >= 0: %d\n", clock() >= 0);
    return 0;
}

static int t_personality(int argc, char **argv) {
    int p = personality(0xffffffff);
    printf("personality %#x\n", p);
    printf("set ADDR_NO_RANDOMIZE: old %#x\n", personality(p | ADDR_NO_RANDOMIZE));
    printf("now %#x\n", personality(0xffffffff));
    return 0;
}

static int t_resuid(int argc, char **argv) {
    uid_t r = 77, e = 77, s = 77;
    gid_t rg = 77, eg = 77, sg = 77;
    int ru = getresuid(&r, &e, &s);
    printf("getresuid %d: %d %d %d\n", ru, (int)r, (int)e, (int)s);
    int rgr = getresgid(&rg, &eg, &sg);
    printf("getresgid %d: %d %d %d\n", rgr, (int)rg, (int)eg, (int)sg);
    printf("getuid %d geteuid %d getgid %d getegid %d\n", (int)getuid(), (int)geteuid(),
           (int)getgid(), (int)getegid());
    gid_t groups[64];
    int n = getgroups(64, groups);
    printf("getgroups %d\n", n);
    return 0;
}

/* Fields 14-17 of /proc/PID/stat (utime, stime, cutime, cstime), in clock ticks. */
static int stat_times(const char *path, long out[4]) {
    if (slurp(path) < 0) return -1;
    char *t = strrchr(text, ')');
    int field = 2;
    for (t = strtok(t + 1, " \n"); t; t = strtok(NULL, " \n")) {
        field++;
        if (field >= 14 && field <= 17) out[field - 14] = atol(t);
    }
    return 0;
}

static int t_stat_times(int argc, char **argv) {
    int fds[2];
    pipe(fds);
    long own[4], kid[4], task[4];
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
    if (pid == 0) {
        volatile unsigned long x = 0;
        double end = now_s() + 0.3;
        while (now_s() < end)
            for (int i = 0; i < 100000; i++) x += i;
        write(fds[1], "x", 1);
        for (;;) pause();
    }
    char c, path[64];
    read(fds[0], &c, 1);
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    stat_times(path, kid);
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)pid);
    stat_times(path, task);
    printf("child utime > 0: %d task utime > 0: %d\n", kid[0] > 0, task[0] > 0);
    stat_times("/proc/self/stat", own);
    printf("own cutime before reaping: %ld\n", own[2]);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    stat_times("/proc/self/stat", own);
    printf("own cutime after reaping > 0: %d\n", own[2] > 0);
    return 0;
}

static struct subtest tests[] = {
    {"stat", t_stat}, {"status", t_status}, {"cmdline", t_cmdline}, {"maps", t_maps},
    {"fd", t_fd}, {"exe", t_exe}, {"cwd", t_cwd}, {"rusage", t_rusage}, {"times", t_times},
    {"personality", t_personality}, {"resuid", t_resuid}, {"stat_times", t_stat_times},
};
RUN_SUBTESTS(tests)
