/* Syscalls the fast path serves (issue 15), for tests/unit/runtime/test_syscall_fastpath.py
 * and test_save_restore.py. x86_64 and -m32 (int 0x80).
 *
 *   fastpath calls          one of each hot call, and hostile arguments: prints each result
 *   fastpath signal         getppid in a loop until SIGALRM (setitimer, 5 ms) is delivered
 *   fastpath loop N [gate]  N rounds of getppid + getpid + gettid + a 16-byte /dev/null write
 *                           + clock_gettime, folded into a checksum; "progress P%" every 10%;
 *                           with "gate", one byte is read from stdin before the last line
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long raw(long nr, long a, long b, long c) {
    long r = syscall(nr, a, b, c);
    return r < 0 ? -errno : r;
}

static void calls(void) {
    static const char rec[16] = "0123456789abcde\n";
    int null = open("/dev/null", O_RDWR);
    int p[2];
    char back[16] = {0};
    struct timespec ts = {0, 0};
    printf("getpid=%ld getppid=%ld gettid=%ld\n", raw(SYS_getpid, 0, 0, 0),
           raw(SYS_getppid, 0, 0, 0), raw(SYS_gettid, 0, 0, 0) == raw(SYS_getpid, 0, 0, 0));
    printf("write-null=%ld read-null=%ld\n", raw(SYS_write, null, (long)rec, 16),
           raw(SYS_read, null, (long)back, 16));
    printf("write-badfd=%ld write-negfd=%ld write-zero=%ld\n",
           raw(SYS_write, 999, (long)rec, 16), raw(SYS_write, -5, (long)rec, 16),
           raw(SYS_write, null, (long)rec, 0));
    printf("pipe=%d", pipe(p));
    long wrote = raw(SYS_write, p[1], (long)rec, 16);     /* in order: not in printf's args */
    long got = raw(SYS_read, p[0], (long)back, 16);
    printf(" pipe-write=%ld pipe-read=%ld same=%d\n", wrote, got, memcmp(rec, back, 16) == 0);
    printf("write-efault=%ld\n", raw(SYS_write, p[1], 16, 16));
    long clock = raw(SYS_clock_gettime, CLOCK_MONOTONIC, (long)&ts, 0);
    printf("clock=%ld nonzero=%d\n", clock, ts.tv_sec != 0 || ts.tv_nsec != 0);
    printf("clock-efault=%ld\n", raw(SYS_clock_gettime, CLOCK_MONOTONIC, 8, 0));
    long brk0 = raw(SYS_brk, 0, 0, 0);
    printf("brk-grows=%d\n", raw(SYS_brk, brk0 + 65536, 0, 0) == brk0 + 65536);
    void *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("mmap=%d", m != MAP_FAILED);
    if (m != MAP_FAILED) {
        ((volatile char *)m)[100] = 7;
        int touched = ((volatile char *)m)[100];
        printf(" touched=%d munmap=%d", touched, munmap(m, 8192));
    }
    printf("\n");
    printf("unknown=%ld huge=%ld\n", raw(1000, 0, 0, 0), raw(0x7fffff00L, 0, 0, 0));
    fflush(stdout);
}

static volatile sig_atomic_t rang;

static void on_alarm(int sig) {
    (void)sig;
    rang = 1;
}

static void signal_loop(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 0}, {0, 5000}};
    setitimer(ITIMER_REAL, &it, NULL);
    unsigned long n = 0;
    while (!rang) {
        syscall(SYS_getppid);
        n++;
    }
    printf("signal delivered after calls=%d\n", n > 0);
}

static void loop(long n, int gate) {
    static const char rec[16] = "0123456789abcde\n";
    int null = open("/dev/null", O_WRONLY);
    uint64_t sum = 1469598103934665603ULL;
    long step = n / 10 ? n / 10 : 1;
    for (long i = 1; i <= n; i++) {
        struct timespec ts;
        uint64_t v = (uint64_t)syscall(SYS_getppid) + 3 * (uint64_t)syscall(SYS_getpid)
                     + 5 * (uint64_t)syscall(SYS_gettid)
                     + 7 * (uint64_t)syscall(SYS_write, null, rec, 16)
                     + 11 * (uint64_t)syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
        sum = (sum ^ (v + (uint64_t)i)) * 1099511628211ULL;
        if (i % step == 0) {
            printf("progress %ld%%\n", i / step * 10);
            fflush(stdout);
        }
    }
    if (gate) {
        char c;
        if (read(0, &c, 1) != 1) {
            return;
        }
    }
    printf("loop n=%ld sum=%016llx\n", n, (unsigned long long)sum);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "calls";
    if (strcmp(mode, "calls") == 0) {
        calls();
    } else if (strcmp(mode, "signal") == 0) {
        signal_loop();
    } else if (strcmp(mode, "loop") == 0) {
        loop(argc > 2 ? atol(argv[2]) : 1000, argc > 3 && strcmp(argv[3], "gate") == 0);
    } else {
        return 2;
    }
    return 0;
}
