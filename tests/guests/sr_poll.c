/* A poll with a 3 s timeout, saved about 2 s into it: after the restore the wait keeps its
 * deadline (about 1 s left, as Linux restarts it with the time remaining) instead of waiting
 * 3 s again. The guest's monotonic clock does not count the time the partition was saved. */
#include <poll.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int p[2];
    pipe(p);
    struct pollfd pfd = {p[0], POLLIN, 0};
    double t0 = now();
    printf("polling\n");
    int r = poll(&pfd, 1, 3000);
    double waited = now() - t0;
    printf("poll=%d waited-under-4s=%d waited-2.9s-or-more=%d\n", r, waited < 4.0,
           waited >= 2.9);
    return 0;
}
