/* Touches N MiB of heap with non-zero data, prints "ready", then prints "a" every 5 ms
 * (the first "a" after a restore tells the guest runs again) until killed. */
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
    struct timespec ts = {0, 5 * 1000 * 1000};
    for (int k = 0; k < 1000000; k++) {
        nanosleep(&ts, NULL);
        printf("a\n");
        fflush(stdout);
    }
    return 0;
}
