/* Two threads hand a token back and forth argv[1] times through futexes, every wait with a
 * 100 s timeout that never expires (each leaves a timer the scheduler must not keep). */
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile int turn;          /* 0: ping's turn, 1: pong's */
static long rounds;

static void wait_for(int want) {
    struct timespec t = {100, 0};
    while (__atomic_load_n(&turn, __ATOMIC_ACQUIRE) != want)
        syscall(SYS_futex, &turn, FUTEX_WAIT, !want, &t, NULL, 0);
}

static void give(int to) {
    __atomic_store_n(&turn, to, __ATOMIC_RELEASE);
    syscall(SYS_futex, &turn, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void *pong(void *arg) {
    for (long i = 0; i < rounds; i++) { wait_for(1); give(0); }
    return arg;
}

int main(int argc, char **argv) {
    rounds = argc > 1 ? atol(argv[1]) : 1000;
    pthread_t t;
    pthread_create(&t, NULL, pong, NULL);
    for (long i = 0; i < rounds; i++) { give(1); wait_for(0); }
    pthread_join(t, NULL);
    printf("rounds=%ld\n", rounds);
    return 0;
}
