/* Four threads hand a token around with atomic spin-waits (no syscall while spinning):
 * thread i waits until token % 4 == i, folds its id into a shared value and passes the
 * token on. With fewer vCPUs than threads this finishes only if a spinning thread is
 * preempted. Prints "rounds=R value=V" (deterministic) and exits 0. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 4
static long rounds = 8;
static volatile long token;
static unsigned long long value = 1;         /* written only by the token holder */

static void *work(void *arg) {
    long id = (long)arg;
    for (long r = 0; r < rounds; r++) {
        long want = r * THREADS + id;
        while (__atomic_load_n(&token, __ATOMIC_ACQUIRE) != want)
            ;
        for (int k = 0; k < 1000; k++) value = value * 6364136223846793005ULL + id + k;
        __atomic_store_n(&token, want + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) rounds = atol(argv[1]);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    printf("rounds=%ld value=%llu\n", rounds, value);
    return 0;
}
