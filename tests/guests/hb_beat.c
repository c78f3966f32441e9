/* Heartbeat guest for the failure tests: every INTERVAL ms (argv[1], default 50) prints
 * "beat <CLOCK_REALTIME ns>" and flushes, forever. The guest's realtime clock is the host's,
 * so beats from two copies of one partition on two nodes can be compared on one time line. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long interval_ms = argc > 1 ? atol(argv[1]) : 50;
    struct timespec pause = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    struct timespec now;
    for (;;) {
        clock_gettime(CLOCK_REALTIME, &now);
        printf("beat %lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
        fflush(stdout);
        nanosleep(&pause, NULL);
    }
    return 0;
}
