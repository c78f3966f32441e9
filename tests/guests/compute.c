/* A pure compute loop for speed comparisons (no syscalls in the loop). */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000000;
    unsigned long long x = 1, acc = 0;
    for (long i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        acc += (x >> 33) ^ (acc << 1);
    }
    printf("%llu\n", acc);
    return 0;
}
