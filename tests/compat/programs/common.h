/* Shared by the compat programs: `prog SUBTEST args...` runs one named subtest. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct subtest { const char *name; int (*fn)(int argc, char **argv); };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Print errno symbolically enough to compare ("-1 EINTR"). */
static const char *ename(int e) {
    switch (e) {
    case 0: return "0";
    case EINTR: return "EINTR"; case EAGAIN: return "EAGAIN"; case EPIPE: return "EPIPE";
    case ENOENT: return "ENOENT"; case EEXIST: return "EEXIST"; case EPERM: return "EPERM";
    case EINVAL: return "EINVAL"; case ECHILD: return "ECHILD"; case ENOSYS: return "ENOSYS";
    case EBADF: return "EBADF"; case EFAULT: return "EFAULT"; case ESRCH: return "ESRCH";
    case ETIMEDOUT: return "ETIMEDOUT"; case ENXIO: return "ENXIO"; case ENOMEM: return "ENOMEM"; case EADDRINUSE: return "EADDRINUSE"; case ENOTDIR: return "ENOTDIR";
    case EOPNOTSUPP: return "EOPNOTSUPP"; case ENOTCONN: return "ENOTCONN";
    default: return "E?";
    }
}

/* Prints "label: R", or "label: -1 ENAME" reading errno after the call (the order in which
 * printf's arguments are evaluated is unspecified). */
#define CALL(label, expr)                                                          \
    do {                                                                           \
        errno = 0;                                                                 \
        long r_ = (long)(expr);                                                    \
        int e_ = errno;                                                            \
        if (r_ < 0) printf("%s: %ld %s\n", label, r_, ename(e_));                   \
        else printf("%s: %ld\n", label, r_);                                        \
    } while (0)

#define RUN_SUBTESTS(table)                                                        \
    int main(int argc, char **argv) {                                              \
        setvbuf(stdout, NULL, _IOLBF, 0);                                          \
        if (argc < 2) { fprintf(stderr, "usage: %s SUBTEST\n", argv[0]); return 2; } \
        for (unsigned i = 0; i < sizeof(table) / sizeof(table[0]); i++)            \
            if (strcmp(table[i].name, argv[1]) == 0)                               \
                return table[i].fn(argc - 1, argv + 1);                            \
        fprintf(stderr, "unknown subtest %s\n", argv[1]);                          \
        return 2;                                                                  \
    }
