/* Races every path-taking call against threads that keep swapping symlinks to host paths
 * over regular files and directories.
 *
 * usage: race_paths ABS_CANARY REL_CANARY ABS_OUTSIDE_DIR REL_OUTSIDE_DIR MS ATTACKERS VICTIMS
 *
 * ABS_* are host paths outside the partition root; REL_* are the same places relative to the
 * host directory that holds /w in the upper layer. Inside the guest these texts name nothing
 * (or something inside the root); a runtime that resolves a guest path and then acts on a host
 * path lets a concurrent rename redirect the act to the host file. The host test checks the
 * canary afterwards. The guest only reports how many rounds each side ran. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NFILES 4
#define NDIRS 2
#define MAX_THREADS 8

static const char *file_targets[4];
static const char *dir_targets[4];
static char deep_file[4200], deep_dir[4200];
static long long deadline_ns;
static long rounds[2 * MAX_THREADS];

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void put_file(const char *path) {
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd >= 0) {
        write(fd, "guest\n", 6);
        close(fd);
    }
}

/* Even attackers flip files f(a/2 % NFILES) and f(a/2+2 % NFILES) between a regular file and a
 * symlink whose text is a host path; odd attackers flip directory d(a/2 % NDIRS) between a real
 * directory and such a symlink. */
static void *attacker(void *arg) {
    long a = (long)arg;
    char tmp[64], reg[64], old[64], file[64], dir[64];
    unsigned k = (unsigned)a * 7u;
    snprintf(tmp, sizeof tmp, "/w/.tmp%ld", a);
    snprintf(reg, sizeof reg, "/w/.reg%ld", a);
    snprintf(old, sizeof old, "/w/.old%ld", a);
    snprintf(dir, sizeof dir, "/w/d%ld", (a / 2) % NDIRS);
    while (now_ns() < deadline_ns) {
        k++;
        if (a % 2 == 0) {
            snprintf(file, sizeof file, "/w/f%ld", (a / 2 + 2 * (k & 1)) % NFILES);
            symlink(file_targets[k % 4], tmp);
            rename(tmp, file);
            put_file(reg);
            rename(reg, file);
        } else if (rename(dir, old) == 0) {
            symlink(dir_targets[k % 4], dir);
            sched_yield();
            unlink(dir);
            rename(old, dir);
        }
        rounds[a]++;
    }
    return NULL;
}

static void *victim(void *arg) {
    long v = (long)arg;
    unsigned k = (unsigned)v * 13u;
    char f[64], g[64], p[96], q[96];
    struct stat st;
    struct timeval tv[2] = {{1, 0}, {2, 0}};
    char buf[256];
    int wfd = open("/w", O_RDONLY | O_DIRECTORY);
    while (now_ns() < deadline_ns) {
        k++;
        snprintf(f, sizeof f, "/w/f%u", k % NFILES);
        if (v % 2 == 0) {         /* every other victim hammers the cheapest escape */
            for (int i = 0; i < 16; i++) {
                snprintf(f, sizeof f, "/w/f%u", (k + i) % NFILES);
                truncate(f, 0);
            }
            rounds[MAX_THREADS + v]++;
            continue;
        }
        snprintf(g, sizeof g, "f%u", (k + 1) % NFILES);
        snprintf(p, sizeof p, "/w/d%u/x%ld", k % NDIRS, v);
        snprintf(q, sizeof q, "/w/d%u/y%ld", (k + 1) % NDIRS, v);
        truncate(f, 0);
        int fd = open(f, O_WRONLY | O_TRUNC);
        if (fd >= 0) { write(fd, "pwned\n", 6); close(fd); }
        fd = open(f, O_WRONLY | O_APPEND);
        if (fd >= 0) { write(fd, "pwned\n", 6); ftruncate(fd, 1); close(fd); }
        fd = openat(wfd, g, O_RDWR);
        if (fd >= 0) { pwrite(fd, "pwned\n", 6, 100); close(fd); }
        fd = open(p, O_CREAT | O_WRONLY, 0644);
        if (fd >= 0) { write(fd, "x\n", 2); close(fd); }
        fd = creat(q, 0644);
        if (fd >= 0) close(fd);
        truncate(p, 3);
        chmod(f, 0777);
        chown(f, 1, 1);
        lchown(f, 1, 1);
        utimes(f, tv);
        utimensat(AT_FDCWD, f, NULL, 0);
        syscall(SYS_fchmodat, AT_FDCWD, f, 0777);
        fchownat(AT_FDCWD, f, 2, 2, AT_SYMLINK_NOFOLLOW);
        stat(f, &st);
        lstat(f, &st);
        fstatat(AT_FDCWD, p, &st, 0);
        readlink(f, buf, sizeof buf);
        access(f, W_OK);
        faccessat(AT_FDCWD, p, W_OK, 0);
        link(f, q);
        unlink(q);
        rename(f, q);
        rename(q, f);
        mkdir(q, 0755);
        rmdir(q);
        symlink("x", q);
        unlink(q);
        unlink(p);
        /* long paths through the swapped directory and through a dozen ".." components */
        truncate(deep_file, 0);
        fd = open(deep_dir, O_CREAT | O_WRONLY, 0644);
        if (fd >= 0) close(fd);
        if (chdir("/w") == 0) {
            truncate(g, 0);
            chdir("/");
        }
        rounds[MAX_THREADS + v]++;
    }
    if (wfd >= 0) close(wfd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: race_paths ABS REL ABSDIR RELDIR MS ATTACKERS VICTIMS\n");
        return 2;
    }
    static char far_file[4200], far_dir[4200];
    char *p = far_file;
    for (int i = 0; i < 20; i++) p += sprintf(p, "../");
    strcpy(p, argv[1] + 1);
    p = far_dir;
    for (int i = 0; i < 20; i++) p += sprintf(p, "../");
    strcpy(p, argv[3] + 1);
    file_targets[0] = argv[1];
    file_targets[1] = argv[2];
    file_targets[2] = far_file;
    file_targets[3] = argv[1];
    dir_targets[0] = argv[3];
    dir_targets[1] = argv[4];
    dir_targets[2] = far_dir;
    dir_targets[3] = argv[3];
    snprintf(deep_file, sizeof deep_file, "/w/d0/../d1/../f%d", 1);
    snprintf(deep_dir, sizeof deep_dir, "/w/d1/../d0/deep");
    int ms = atoi(argv[5]), na = atoi(argv[6]), nv = atoi(argv[7]);
    if (na < 1 || na > MAX_THREADS || nv < 1 || nv > MAX_THREADS) return 2;
    mkdir("/w", 0755);
    char name[64];
    for (int i = 0; i < NFILES; i++) {
        snprintf(name, sizeof name, "/w/f%d", i);
        put_file(name);
    }
    for (int i = 0; i < NDIRS; i++) {
        snprintf(name, sizeof name, "/w/d%d", i);
        mkdir(name, 0755);
    }
    deadline_ns = now_ns() + ms * 1000000LL;
    pthread_t th[2 * MAX_THREADS];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 << 10);
    for (long i = 0; i < na; i++)
        if (pthread_create(&th[i], &attr, attacker, (void *)i) != 0) return 3;
    for (long i = 0; i < nv; i++)
        if (pthread_create(&th[MAX_THREADS + i], &attr, victim, (void *)i) != 0) return 3;
    for (long i = 0; i < na; i++) pthread_join(th[i], NULL);
    for (long i = 0; i < nv; i++) pthread_join(th[MAX_THREADS + i], NULL);
    long ar = 0, vr = 0;
    for (int i = 0; i < na; i++) ar += rounds[i];
    for (int i = 0; i < nv; i++) vr += rounds[MAX_THREADS + i];
    printf("attacker_rounds=%ld victim_rounds=%ld\n", ar, vr);
    return 0;
}
