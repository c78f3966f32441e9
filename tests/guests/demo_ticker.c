/* Demo guest: prints a numbered tick every INTERVAL ms, COUNT times (argv[1], argv[2]). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 60;
    int interval_ms = argc > 2 ? atoi(argv[2]) : 500;
    char host[64] = "?";
    gethostname(host, sizeof host);
    struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    for (int i = 1; i <= count; i++) {
        printf("%s: tick %d of %d\n", host, i, count);
        fflush(stdout);
        nanosleep(&ts, NULL);
    }
    return 0;
}
