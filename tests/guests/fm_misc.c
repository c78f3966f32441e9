/* /proc seen from C and the accounting/identity calls: each result printed as "name: value".
 * Built -static for x86_64 and -m32. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/times.h>
#include <unistd.h>

static void slurp(const char *label, const char *path) {
    char buf[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("%s: errno=%d\n", label, errno); return; }
    int n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n < 0 ? 0 : n] = 0;
    for (int i = 0; i + 1 < n; i++) if (buf[i] == 0) buf[i] = ' ';
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    printf("%s: %s\n", label, buf);
}

static void link_of(const char *label, const char *path) {
    char buf[256];
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    if (n < 0) { printf("%s: errno=%d\n", label, errno); return; }
    buf[n] = 0;
    printf("%s: %s\n", label, buf);
}

int main(int argc, char **argv) {
    volatile char *touch = malloc(1 << 20);
    for (int i = 0; i < (1 << 20); i += 4096) touch[i] = 1;
    chdir("/tmp");
    link_of("self", "/proc/self");
    link_of("exe", "/proc/self/exe");
    link_of("cwd", "/proc/self/cwd");
    link_of("root", "/proc/1/root");
    int fd = open("/tmp/file", O_CREAT | O_RDWR, 0644);
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    link_of("fd", p);
    int pipefd[2];
    pipe(pipefd);
    snprintf(p, sizeof p, "/proc/self/fd/%d", pipefd[0]);
    link_of("pipe", p);
    slurp("cmdline", "/proc/self/cmdline");
    slurp("comm", "/proc/self/comm");
    slurp("osrelease", "/proc/sys/kernel/osrelease");
    slurp("ostype", "/proc/sys/kernel/ostype");
    slurp("hostname", "/proc/sys/kernel/hostname");
    slurp("meminfo", "/proc/meminfo");
    slurp("mounts", "/proc/mounts");
    slurp("passwd via root", "/proc/1/root/etc/passwd");
    slurp("escape", "/proc/self/cwd/../../../etc/passwd");
    slurp("host proc", "/proc/1/root/proc/1/environ");
    printf("write proc: %d\n", open("/proc/self/comm", O_WRONLY) < 0 ? errno : 0);
    printf("create proc: %d\n", open("/proc/new", O_CREAT | O_WRONLY, 0644) < 0 ? errno : 0);
    printf("mkdir proc: %d\n", mkdir("/proc/1/x", 0755) < 0 ? errno : 0);
    printf("unlink proc: %d\n", unlink("/proc/meminfo") < 0 ? errno : 0);
    printf("missing pid: %d\n", open("/proc/4242/stat", O_RDONLY) < 0 ? errno : 0);
    DIR *d = opendir("/proc");
    int pids = 0, self = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] >= '1' && e->d_name[0] <= '9') pids++;
        if (strcmp(e->d_name, "self") == 0) self = e->d_type == DT_LNK;
    }
    closedir(d);
    printf("listing: pids=%d self_is_link=%d\n", pids, self);
    struct stat st;
    int src = stat("/proc/meminfo", &st);
    printf("stat meminfo: %d %o\n", src, (unsigned)(st.st_mode & 0777));
    /* accounting and identity */
    for (volatile long i = 0; i < 3000000; i++) {}
    struct rusage ru;
    printf("getrusage: %d\n", getrusage(RUSAGE_SELF, &ru));
    printf("rusage sane: %d\n", ru.ru_utime.tv_sec + ru.ru_stime.tv_sec < 100000 &&
           ru.ru_utime.tv_usec < 1000000 && ru.ru_maxrss >= 1024);
    printf("getrusage thread: %d\n", getrusage(RUSAGE_THREAD, &ru));
    int rc = getrusage(RUSAGE_CHILDREN, &ru);
    printf("getrusage children: %d %ld\n", rc, (long)ru.ru_utime.tv_sec);
    rc = getrusage(5, &ru);
    printf("getrusage bad: %d %d\n", rc, errno);
    struct tms t;
    clock_t c = times(&t);
    printf("times: %d\n", c != (clock_t)-1 && t.tms_cutime == 0);
    printf("personality: %d\n", personality(0xffffffff));
    printf("personality set: %d\n", personality(PER_LINUX));
    printf("ioprio_get: %ld\n", syscall(SYS_ioprio_get, 1, 0));
    printf("ioprio_set: %ld\n", syscall(SYS_ioprio_set, 1, 0, (2 << 13) | 7));
    printf("ioprio_get again: %ld\n", syscall(SYS_ioprio_get, 1, 0));
    long lrc = syscall(SYS_ioprio_get, 9, 0);
    printf("ioprio_get bad: %ld %d\n", lrc, errno);
    uid_t r = 9, e = 9, s = 9;
    rc = getresuid(&r, &e, &s);
    printf("getresuid: %d %u %u %u\n", rc, r, e, s);
    gid_t gr = 9, ge = 9, gs = 9;
    rc = getresgid(&gr, &ge, &gs);
    printf("getresgid: %d %u %u %u\n", rc, gr, ge, gs);
    errno = 0;
    printf("getpriority: %d\n", getpriority(PRIO_PROCESS, 0));
    printf("setpriority: %d\n", setpriority(PRIO_PROCESS, 0, 5));
    printf("getpriority again: %d\n", getpriority(PRIO_PROCESS, 0));
    struct sysinfo si;
    rc = sysinfo(&si);
    printf("sysinfo: %d\n", rc);
    printf("sysinfo mem: %lu %d %d\n", (unsigned long)(si.totalram / (1024 * 1024) * si.mem_unit),
           si.freeram < si.totalram, si.procs);
    return 0;
}
