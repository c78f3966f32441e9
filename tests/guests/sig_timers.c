/* Timers that send signals: alarm + pause, a repeating setitimer, a POSIX timer. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks;
static volatile int code, value, signo;

static void tick(int sig) { (void)sig; ticks++; }

static void timer_info(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    signo = sig;
    code = si->si_code;
    value = si->si_value.sival_int;
    ticks++;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGALRM, tick);
    printf("alarm: %u\n", alarm(1));
    printf("alarm again: %u\n", alarm(1));
    int r = pause();
    printf("pause: r=%d eintr=%d ticks=%d\n", r, errno == EINTR, ticks);

    ticks = 0;
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    while (ticks < 3)
        pause();
    struct itimerval got;
    getitimer(ITIMER_REAL, &got);
    printf("setitimer: ticks=%d interval=%ld\n", ticks, (long)got.it_interval.tv_usec);
    memset(&it, 0, sizeof it);
    setitimer(ITIMER_REAL, &it, NULL);
    getitimer(ITIMER_REAL, &got);
    printf("disarmed: %ld %ld\n", (long)got.it_value.tv_sec, (long)got.it_value.tv_usec);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = timer_info;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGRTMIN, &sa, NULL);
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGRTMIN;
    sev.sigev_value.sival_int = 777;
    timer_t id;
    printf("timer_create: %d\n", timer_create(CLOCK_MONOTONIC, &sev, &id));
    struct itimerspec spec = {{0, 0}, {0, 30 * 1000 * 1000}};
    ticks = 0;
    printf("timer_settime: %d\n", timer_settime(id, 0, &spec, NULL));
    struct itimerspec left;
    timer_gettime(id, &left);
    printf("timer_gettime: armed=%d\n", left.it_value.tv_nsec > 0 || left.it_value.tv_sec > 0);
    while (!ticks)
        pause();
    printf("timer: signo_ok=%d code=%d value=%d\n", signo == SIGRTMIN, code, value);
    printf("timer_delete: %d\n", timer_delete(id));
    return 0;
}
