/* Guest-speed benchmark: integer arithmetic + memory stores, deterministic checksum.
 *
 * A xorshift generator fills and rewrites a 4 MiB table (stores to data pages, both
 * sequential and scattered), folding everything into a 64-bit checksum. No syscalls in the
 * loop. Usage: compute_loop [ROUNDS]   (default 80: ~1-3 s under qemu-user)
 * Built x86_64 and i386 (-m32) by bench/runtime.py; both print the same checksum.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef WORDS
#define WORDS (1u << 20) /* 4 MiB of uint32_t */
#endif

static uint32_t table[WORDS];

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 80;
    uint32_t x = 2463534242u;
    uint64_t sum = 0;
    for (long r = 0; r < rounds; r++) {
        for (uint32_t i = 0; i < WORDS; i++) {          /* sequential stores */
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            table[i] = x + i * 2654435761u;
        }
        for (uint32_t i = 0; i < WORDS; i++) {          /* scattered read-modify-write */
            uint32_t j = (table[i] ^ (uint32_t)r) & (WORDS - 1);
            table[j] += table[i] >> 3;
            sum = sum * 31u + (table[j] ^ i);
        }
    }
    printf("compute_loop rounds=%ld checksum=%016llx\n", rounds, (unsigned long long)sum);
    return 0;
}
