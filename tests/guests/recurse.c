/* Fills a 1 MiB malloc'd (mmap'd) block with a pattern, recurses argv[1] KiB deep (4 KiB
 * frames), then checks the block: prints "intact" or "corrupted". With a stack guard gap
 * the recursion past the stack's end faults instead. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long deep(long left) {
    volatile char frame[4096];
    memset((char *)frame, 0x77, sizeof frame);
    if (left <= 0) return frame[3];
    return deep(left - 1) + frame[5];
}

int main(int argc, char **argv) {
    long kib = argc > 1 ? atol(argv[1]) : 1024;
    size_t size = 1 << 20;
    unsigned char *block = malloc(size);
    memset(block, 0x11, size);
    long r = deep(kib / 4);
    for (size_t i = 0; i < size; i++) {
        if (block[i] != 0x11) {
            printf("corrupted at %zu r=%ld\n", i, r);
            return 0;
        }
    }
    printf("intact r=%ld\n", r);
    return 0;
}
