/* vCPU-scaling benchmark: 4 threads, each an independent compute + store loop on its own
 * 1 MiB slice; partial checksums combined in thread order, so the result is deterministic.
 * Usage: threads4 [ROUNDS]   (default 12)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 4
#define WORDS (1u << 18) /* 1 MiB of uint32_t per thread */

static uint32_t slices[THREADS][WORDS];
static uint64_t partial[THREADS];
static long rounds = 12;

static void *work(void *arg) {
    long id = (long)arg;
    uint32_t *t = slices[id];
    uint32_t x = 2463534242u + (uint32_t)id * 7919u;
    uint64_t sum = 0;
    for (long r = 0; r < rounds; r++) {
        for (uint32_t i = 0; i < WORDS; i++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            t[i] = x + i * 2654435761u;
        }
        for (uint32_t i = 0; i < WORDS; i++) {
            uint32_t j = (t[i] ^ (uint32_t)r) & (WORDS - 1);
            t[j] += t[i] >> 3;
            sum = sum * 31u + (t[j] ^ i);
        }
    }
    partial[id] = sum;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) rounds = atol(argv[1]);
    pthread_t th[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, work, (void *)i);
    uint64_t total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total = total * 1000003u ^ partial[i];
    }
    printf("threads4 rounds=%ld checksum=%016llx\n", rounds, (unsigned long long)total);
    return 0;
}
