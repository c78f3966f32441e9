/* Syscall-rate benchmark: N raw syscalls in a tight loop, timed by the guest itself.
 *
 * Usage: syscall_rate getppid|null|stdout [N]   (default N = 1000000)
 *   getppid  syscall(SYS_getppid)
 *   null     16-byte write(2) to a descriptor opened on /dev/null (the guest's /dev/null)
 *   stdout   16-byte write(2) to fd 1 (the partition's console)
 * Prints (to stderr, so the stdout case stays 16-byte records):
 *   "syscall_rate MODE n=N ns=ELAPSED"  elapsed = CLOCK_MONOTONIC around the loop.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "getppid";
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    static const char rec[16] = "0123456789abcde\n";
    int fd = 1;
    if (strcmp(mode, "null") == 0) {
        fd = open("/dev/null", O_WRONLY);
        if (fd < 0) { perror("open /dev/null"); return 2; }
    } else if (strcmp(mode, "getppid") != 0 && strcmp(mode, "stdout") != 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    long bad = 0;
    long long t0 = now_ns();
    if (mode[0] == 'g') {
        for (long i = 0; i < n; i++) bad += syscall(SYS_getppid) < 0;
    } else {
        for (long i = 0; i < n; i++) bad += syscall(SYS_write, fd, rec, 16) != 16;
    }
    long long t1 = now_ns();
    fprintf(stderr, "syscall_rate %s n=%ld ns=%lld bad=%ld\n", mode, n, t1 - t0, bad);
    return bad != 0;
}
