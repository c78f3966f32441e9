/* Guest atomics across vCPUs: 4 threads hammer LOCK XADD, a CMPXCHG retry loop and an
 * XCHG spinlock guarding a plain counter, then one misaligned (page-straddling) LOCK ADD.
 * Each vCPU is its own unicorn instance on its own host thread, so these are only exact
 * when unicorn emits host atomics (the atomic unicorn patch, docs/unicorn-patch.md).
 * Prints "xadd=N cas=N spin=N split=N" (spin: every 20th iteration) and exits 0 only when all are exact. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
static long iters = 200000;
static volatile long xadd_count;
static volatile int cas_count;
static volatile int spin;
static long spin_count;                       /* plain: guarded by the xchg spinlock */
static volatile int go;
static unsigned char page_pair[8192] __attribute__((aligned(4096)));

static void *work(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE)) ;
    for (long i = 0; i < iters; i++) {
        __atomic_fetch_add(&xadd_count, 1, __ATOMIC_SEQ_CST);
        int old = cas_count;
        while (!__sync_bool_compare_and_swap(&cas_count, old, old + 1)) old = cas_count;
        if (i % 20 == 0) {      /* rarer: waiters on 2 host cores spin while a holder is off */
            while (__atomic_exchange_n(&spin, 1, __ATOMIC_ACQUIRE)) ;
            spin_count++;
            __atomic_store_n(&spin, 0, __ATOMIC_RELEASE);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) iters = atol(argv[1]);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, NULL);
    __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    unsigned int split;                      /* a LOCK ADD straddling two pages */
    unsigned int *p = (unsigned int *)(page_pair + 4094);
    memcpy(p, &(unsigned int){41}, 4);
    __asm__ volatile("lock addl $1, %0" : "+m"(*p));
    memcpy(&split, p, 4);
    long want = THREADS * iters;
    printf("xadd=%ld cas=%d spin=%ld split=%u\n", xadd_count, cas_count, spin_count, split);
    return !(xadd_count == want && cas_count == want && spin_count == THREADS * ((iters + 19) / 20) && split == 42);
}
