/* Touches N MiB of heap with non-zero data, prints "ready", then idles until killed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 16;
    unsigned char *p = malloc(mib << 20);
    for (long i = 0; i < (mib << 20); i += 64) p[i] = (unsigned char)(i * 7 + 1);
    for (long i = 0; i < (mib << 20); i += 4096) p[i] |= 1;
    printf("ready %ld\n", mib);
    fflush(stdout);
    struct timespec ts = {0, 50 * 1000 * 1000};
    unsigned long h = 0;
    for (int k = 0; k < 100000; k++) {
        nanosleep(&ts, NULL);
        if (k == 3) {
            for (long i = 0; i < (mib << 20); i += 4096) h = h * 31 + p[i];
            printf("sum=%lu\n", h);
            fflush(stdout);
        }
    }
    return 0;
}
