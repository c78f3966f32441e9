/* Integration-test guest: prints "sleeping N", sleeps N seconds (nanosleep), prints "awake". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long seconds = argc > 1 ? atol(argv[1]) : 3600;
    printf("sleeping %ld\n", seconds);
    fflush(stdout);
    struct timespec ts = {seconds, 0};
    while (nanosleep(&ts, &ts) != 0) {
    }
    printf("awake\n");
    return argc > 2 ? atoi(argv[2]) : 0;
}
