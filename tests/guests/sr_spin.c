/* A compute loop with no syscalls at all, full of read-modify-write memory instructions
 * (inline "add [mem], reg" / "xor [mem], reg"), so an instruction replayed after a pause
 * would show in the result (it does with stock unicorn 2.1.4).
 * Prints "start", computes, prints "spin=<checksum>". */
#include <stdio.h>
#include <stdlib.h>

static unsigned long long cells[64];

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000000;
    printf("start\n");
    fflush(stdout);
    unsigned long long x = 1;
    for (long i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        unsigned long long v = x >> 40;
        __asm__ volatile("add %1, %0" : "+m"(cells[i & 63]) : "r"(v));   /* add [mem], reg */
        v = cells[i & 63];
        __asm__ volatile("xor %1, %0" : "+m"(cells[(i + 7) & 63]) : "r"(v));
    }
    unsigned long long h = 0;
    for (int i = 0; i < 64; i++) h = h * 1000003ULL + cells[i];
    printf("spin=%llu\n", h);
    return 0;
}
