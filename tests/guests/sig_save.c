/* A pending blocked signal and an armed alarm survive save/restore: "ready" is printed
 * while SIGUSR1 is pending and alarm(1) armed; the test saves during the sleep. */
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1, alarmed;
static void on_usr1(int sig) { (void)sig; usr1++; }
static void on_alarm(int sig) { (void)sig; alarmed++; }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    signal(SIGALRM, on_alarm);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR1);
    alarm(1);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    printf("ready usr1=%d\n", usr1);
    struct timespec d = {0, 400 * 1000 * 1000};
    nanosleep(&d, NULL);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    printf("unblocked usr1=%d alarmed=%d\n", usr1, alarmed);
    while (!alarmed)
        pause();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("alarm after %s\n", took > 0.9 && took < 3.0 ? "about 1s" : "the wrong time");
    return 0;
}
