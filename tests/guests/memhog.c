/* Takes all the memory it can get, every way it can, and writes to every page: an 8 MiB
 * bss, brk until it fails, anonymous mmaps until they fail, the stack down to argv[1] KiB.
 * Prints "hogged" and waits for stdin (so the test can count the host pages in use). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

char bss[8 << 20];

static long deep(long left) {
    volatile char frame[4096];
    memset((char *)frame, 0x5a, sizeof frame);
    if (left <= 0) return frame[7];
    return deep(left - 1) + frame[11];
}

int main(int argc, char **argv) {
    long stack_kib = argc > 1 ? atol(argv[1]) : 0;
    memset(bss, 1, sizeof bss);
    long brk_bytes = 0, mmap_bytes = 0;
    for (;;) {                                   /* brk, 256 KiB at a time */
        char *p = sbrk(256 << 10);
        if (p == (char *)-1) break;
        memset(p, 2, 256 << 10);
        brk_bytes += 256 << 10;
    }
    for (long chunk = 4 << 20; chunk >= 4096; chunk /= 2) {   /* mmap, big to small */
        for (;;) {
            char *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                           -1, 0);
            if (p == MAP_FAILED) break;
            memset(p, 3, chunk);
            mmap_bytes += chunk;
        }
    }
    long r = deep(stack_kib / 4);
    printf("hogged brk=%ld mmap=%ld r=%ld b=%d\n", brk_bytes >> 10, mmap_bytes >> 10, r,
           ((volatile char *)bss)[12345]);
    fflush(stdout);
    char c;
    return read(0, &c, 1) < 0;
}
