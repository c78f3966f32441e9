/* Four threads compute disjoint slices of a checksum; mutex, condvar, join. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 4
static unsigned long long total;
static int finished;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;
static long iterations = 2000000;

static void *work(void *arg) {
    long id = (long)arg;
    unsigned long long x = 88172645463325252ULL + id, sum = 0;
    for (long i = 0; i < iterations; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        sum += x % 1000;
    }
    pthread_mutex_lock(&lock);
    total += sum;
    finished++;
    pthread_cond_signal(&done);
    pthread_mutex_unlock(&lock);
    return (void *)(sum & 0xff);
}

int main(int argc, char **argv) {
    if (argc > 1) iterations = atol(argv[1]);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, (void *)i);
    pthread_mutex_lock(&lock);
    while (finished < THREADS) pthread_cond_wait(&done, &lock);
    pthread_mutex_unlock(&lock);
    unsigned long rets = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        rets += (unsigned long)r;
    }
    printf("checksum=%llu rets=%lu\n", total, rets);
    return 0;
}
