/* Signals sent by another thread (tgkill) to a thread blocked in nanosleep or futex:
 * EINTR (with nanosleep's remaining time) without SA_RESTART, a restart with it. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile int target_tid, handled_tid, hits;
static int word;

static void handler(int sig) { (void)sig; hits++; handled_tid = syscall(SYS_gettid); }

static void install(int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigaction(SIGUSR1, &sa, NULL);
}

static void *poker(void *arg) {
    int wake = *(int *)arg;
    struct timespec d = {0, 100 * 1000 * 1000};
    nanosleep(&d, NULL);
    syscall(SYS_tgkill, getpid(), target_tid, SIGUSR1);
    if (wake) {
        nanosleep(&d, NULL);
        __atomic_store_n(&word, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, &word, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
    return NULL;
}

static long futex_wait(void) {
    return syscall(SYS_futex, &word, FUTEX_WAIT, 0, NULL, NULL, 0);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    target_tid = syscall(SYS_gettid);
    pthread_t th;
    int wake = 0;

    install(0);
    pthread_create(&th, NULL, poker, &wake);
    struct timespec req = {5, 0}, rem = {0, 0};
    int r = nanosleep(&req, &rem);
    printf("nanosleep: r=%d eintr=%d rem_ok=%d hits=%d same_thread=%d\n", r, errno == EINTR,
           rem.tv_sec >= 3 && rem.tv_sec <= 5, hits, handled_tid == target_tid);
    pthread_join(th, NULL);

    pthread_create(&th, NULL, poker, &wake);
    long f = futex_wait();
    printf("futex: r=%ld eintr=%d hits=%d\n", f, errno == EINTR, hits);
    pthread_join(th, NULL);

    install(SA_RESTART);
    wake = 1;
    pthread_create(&th, NULL, poker, &wake);
    f = futex_wait();
    printf("futex restarted: r=%ld word=%d hits=%d\n", f, word, hits);
    pthread_join(th, NULL);

    install(SA_RESTART);
    wake = 0;
    pthread_create(&th, NULL, poker, &wake);
    req.tv_sec = 0;
    req.tv_nsec = 300 * 1000 * 1000;
    r = nanosleep(&req, &rem);
    printf("nanosleep with SA_RESTART: r=%d eintr=%d hits=%d\n", r, errno == EINTR, hits);
    pthread_join(th, NULL);
    return 0;
}
