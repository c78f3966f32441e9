/* CPU accounting and job control inside a partition: proc_acct SUBTEST (test_accounting.py). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/times.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *yes(int b) { return b ? "yes" : "no"; }
static long tv_us(struct timeval tv) { return tv.tv_sec * 1000000L + tv.tv_usec; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Compute until this thread has had `seconds` of CPU, not of wall time: on a loaded host a
 * wall-clock burn got less than the 100 ms the checks below look for. The wall-clock cap
 * (30x) ends it if the thread clock never advances; the checks then fail, as they should. */
static void burn(double seconds) {
    volatile unsigned long x = 0;
    double start = thread_cpu_s(), cap = now_s() + 30 * seconds;
    while (thread_cpu_s() - start < seconds && now_s() < cap)
        for (int i = 0; i < 100000; i++) x += i;
}

/* utime (field 14) of /proc/PID/stat, in ticks */
static long proc_utime(pid_t pid) {
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char *t = strrchr(text, ')');
    int field = 2;
    for (t = strtok(t + 1, " \n"); t; t = strtok(NULL, " \n"))
        if (++field == 14) return atol(t);
    return -1;
}

/* A child that computes without a single syscall is seen in /proc while it runs, and
 * killed, its time still reaches its parent's wait4. */
static int t_kill_busy(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        volatile unsigned long x = 0;
        for (;;) x++;
    }
    /* Until the child has had 200 ms of CPU (20 ticks), at most 10 s of wall time: a fixed
     * 300 ms pause gave it less than 100 ms when other processes took the cores. */
    struct timespec pause = {0, 20000000};
    double cap = now_s() + 10;
    do nanosleep(&pause, NULL); while (proc_utime(pid) < 20 && now_s() < cap);
    printf("busy child's utime in /proc > 0: %s\n", yes(proc_utime(pid) > 0));
    kill(pid, SIGKILL);
    int st;
    struct rusage ru;
    wait4(pid, &st, 0, &ru);
    printf("killed: %d; its rusage utime >= 100ms: %s\n", WTERMSIG(st),
           yes(tv_us(ru.ru_utime) >= 100000));
    return 0;
}

/* Time in syscall handlers is system time; computing is user time. */
static int t_split(void) {
    struct rusage ru;
    int st;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < 100000; i++) syscall(SYS_getppid);
        _exit(0);
    }
    wait4(pid, &st, 0, &ru);
    printf("syscall loop: stime > 0: %s\n", yes(tv_us(ru.ru_stime) > 0));
    pid = fork();
    if (pid == 0) {
        volatile unsigned long x = 0;
        for (unsigned long i = 0; i < 30000000UL; i++) x += i;
        _exit(0);
    }
    wait4(pid, &st, 0, &ru);
    printf("compute loop: utime > 10 * stime: %s\n",
           yes(tv_us(ru.ru_utime) > 10 * tv_us(ru.ru_stime)));
    return 0;
}

static void *burner(void *arg) {
    burn(0.3);
    return NULL;
}

/* RUSAGE_SELF sums the threads; RUSAGE_THREAD is the caller's own. */
static int t_threads(void) {
    pthread_t th;
    pthread_create(&th, NULL, burner, NULL);
    pthread_join(th, NULL);
    struct rusage self, mine;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_THREAD, &mine);
    printf("process utime >= 100ms: %s\n", yes(tv_us(self.ru_utime) >= 100000));
    printf("main thread's is its own: %s\n", yes(tv_us(mine.ru_utime) * 2 < tv_us(self.ru_utime)));
    return 0;
}

/* The children totals survive a save and restore (test_accounting.py saves after "ready"). */
static int t_save(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { burn(0.3); _exit(0); }
    int st;
    waitpid(pid, &st, 0);
    struct rusage before;
    getrusage(RUSAGE_CHILDREN, &before);
    printf("ready\n");
    fflush(stdout);
    struct timespec pause = {1, 0};
    nanosleep(&pause, NULL);
    struct rusage after;
    struct tms t;
    getrusage(RUSAGE_CHILDREN, &after);
    times(&t);
    printf("children utime kept: %s, times cutime > 0: %s\n",
           yes(tv_us(after.ru_utime) == tv_us(before.ru_utime) && tv_us(before.ru_utime) >= 50000),
           yes(t.tms_cutime > 0));
    return 0;
}

static double cpu_clock(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The CPU-time clocks are the process's and the thread's, not the worker's. */
static int t_clocks(void) {
    pthread_t th;
    pthread_create(&th, NULL, burner, NULL);
    pthread_join(th, NULL);
    double proc = cpu_clock(CLOCK_PROCESS_CPUTIME_ID), mine = cpu_clock(CLOCK_THREAD_CPUTIME_ID);
    printf("process clock >= 100ms: %s; main thread's is its own: %s\n", yes(proc >= 0.1),
           yes(mine * 2 < proc));
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { burn(0.3); _exit(0); }
    int st;
    struct rusage ru;
    double before = cpu_clock(CLOCK_PROCESS_CPUTIME_ID);
    wait4(pid, &st, 0, &ru);
    double after = cpu_clock(CLOCK_PROCESS_CPUTIME_ID);
    printf("a child's time is not the parent's: %s\n",
           yes(after - before < (tv_us(ru.ru_utime) + tv_us(ru.ru_stime)) / 2e6));
    printf("clock() follows: %s\n", yes(clock() >= (clock_t)(0.1 * CLOCKS_PER_SEC)));
    return 0;
}

static int pipefd[2];

static void *reader(void *arg) {
    char buf[16];
    int n = read(pipefd[0], buf, sizeof buf);
    printf("reader thread got %d bytes\n", n);
    return NULL;
}

/* A process with two threads (one blocked in read) stops and continues as one. */
static int t_stop_threads(void) {
    int go[2];
    pipe(pipefd);
    pipe(go);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        pthread_t th;
        pthread_create(&th, NULL, reader, NULL);
        pthread_join(th, NULL);
        char c;
        read(go[0], &c, 1);
        _exit(5);
    }
    struct timespec pause = {0, 50000000};
    nanosleep(&pause, NULL);
    int st = 0;
    kill(pid, SIGSTOP);
    pid_t got = waitpid(pid, &st, WUNTRACED);
    printf("stopped: %s by %d\n", yes(got == pid && WIFSTOPPED(st)), WSTOPSIG(st));
    write(pipefd[1], "abc", 3);        /* the reader must not run while stopped... */
    nanosleep(&pause, NULL);
    printf("still stopped: %s\n", yes(waitpid(pid, &st, WNOHANG) == 0));
    kill(pid, SIGCONT);                 /* ...and gets the bytes once continued */
    got = waitpid(pid, &st, WCONTINUED);
    printf("continued: %s\n", yes(got == pid && WIFCONTINUED(st)));
    write(go[1], "g", 1);
    waitpid(pid, &st, 0);
    printf("exited %d\n", WEXITSTATUS(st));
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *t = argc > 1 ? argv[1] : "";
    if (!strcmp(t, "kill_busy")) return t_kill_busy();
    if (!strcmp(t, "split")) return t_split();
    if (!strcmp(t, "threads")) return t_threads();
    if (!strcmp(t, "clocks")) return t_clocks();
    if (!strcmp(t, "save")) return t_save();
    if (!strcmp(t, "stop_threads")) return t_stop_threads();
    fprintf(stderr, "unknown subtest %s\n", t);
    return 2;
}
