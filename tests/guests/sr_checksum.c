/* Four threads fold xorshift streams and a private heap buffer into a running checksum,
 * with regular syscalls (sched_yield, clock_gettime, mutex/condvar futexes). The main
 * thread prints progress (every ten percent, in order); the final line is deterministic:
 * "final=<checksum>".
 * Arguments: [phases [per_phase [gate]]]; with "gate" it waits for a byte on stdin before
 * printing the final line. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h>
#include <unistd.h>

#define THREADS 4
static unsigned long long total;
static int phases_done;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long phases = 40, per_phase = 20000;

static void *work(void *arg) {
    long id = (long)arg;
    unsigned long long x = 88172645463325252ULL + id * 7919;
    unsigned char *buf = malloc(1 << 20);
    memset(buf, (int)id + 1, 1 << 20);
    for (long p = 0; p < phases; p++) {
        unsigned long long sum = 0;
        for (long i = 0; i < per_phase; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            unsigned idx = (unsigned)(x % (1 << 20));
            buf[idx] = (unsigned char)(buf[idx] * 31 + (x >> 40));
            sum += x % 1000 + buf[idx];
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        sched_yield();
        pthread_mutex_lock(&lock);
        total += sum * (unsigned long long)(id + 1);   /* commutative: deterministic */
        phases_done++;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&lock);
    }
    unsigned long long h = 0;
    for (int i = 0; i < (1 << 20); i++) h = h * 131 + buf[i];
    pthread_mutex_lock(&lock);
    total += h;
    pthread_mutex_unlock(&lock);
    free(buf);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) phases = atol(argv[1]);
    if (argc > 2) per_phase = atol(argv[2]);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, (void *)i);
    int printed = 0;   /* tens of percent printed so far */
    pthread_mutex_lock(&lock);
    while (phases_done < THREADS * phases) {
        pthread_cond_wait(&cond, &lock);
        int tens = (int)(10L * phases_done / (THREADS * phases));
        /* Every ten percent crossed is printed, in order, however late this thread woke
         * (on a busy host the workers may be half done before it runs): the lines are the
         * same in every run, and a test waiting for "progress 20%" always sees it. */
        for (; printed < tens; printed++) {
            printf("progress %d%%\n", 10 * (printed + 1));
            fflush(stdout);
        }
    }
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    if (argc > 3 && strcmp(argv[3], "gate") == 0) {
        /* Gated: do not end before a byte arrives on stdin (a test that saves the guest
         * midway must never find it already Off). */
        char c;
        printf("computed\n");
        fflush(stdout);
        if (read(0, &c, 1) != 1) return 3;
    }
    printf("final=%llu\n", total);
    return 0;
}
