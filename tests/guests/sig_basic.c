/* Signal delivery on one thread: handlers, siginfo, flags, masks, alt stacks, waits,
 * siglongjmp out of faults, the FPU across a handler. Prints one line per check. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t hits, depth, max_depth;
static volatile int got_signo, got_code, got_pid_ok, got_value;
static volatile uintptr_t handler_sp;
static sigjmp_buf jump;

static void count(int sig) { (void)sig; hits++; }

static void info_handler(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    got_signo = si->si_signo;
    got_code = si->si_code;
    got_pid_ok = si->si_pid == getpid();
    got_value = si->si_value.sival_int;
    (void)sig;
}

static volatile sig_atomic_t reraise;

static void nested(int sig) {
    depth++;
    if (depth > max_depth) max_depth = depth;
    if (reraise) { reraise = 0; raise(sig); }
    depth--;
}

static void where(int sig) { int local; (void)sig; handler_sp = (uintptr_t)&local; }

static void jump_out(int sig) { siglongjmp(jump, sig); }

static void fpu_user(int sig) {
    volatile double x = 1.0;
    volatile long double y = 3.0L;
    for (int i = 0; i < 10; i++) { x = x * 1.5 + 0.25; y = y / 7.0L + 1.0L; }
    (void)sig;
    hits += (x > 0) + (y > 0);
}

static void install(int sig, void (*fn)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

static void install_info(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = info_handler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(sig, &sa, NULL);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    /* a handler for a self-sent signal */
    install(SIGUSR1, count, 0);
    raise(SIGUSR1);
    printf("raise: hits=%d\n", hits);

    /* SA_SIGINFO: kill is SI_USER, tgkill SI_TKILL, sigqueue SI_QUEUE with a value */
    install_info(SIGUSR2);
    kill(getpid(), SIGUSR2);
    printf("kill: signo=%d code=%d pid_ok=%d\n", got_signo, got_code, got_pid_ok);
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGUSR2);
    printf("tgkill: signo=%d code=%d pid_ok=%d\n", got_signo, got_code, got_pid_ok);
    union sigval v = {.sival_int = 4242};
    sigqueue(getpid(), SIGUSR2, v);
    printf("sigqueue: code=%d value=%d\n", got_code, got_value);

    /* SA_RESETHAND: the action is back to SIG_DFL after one delivery */
    hits = 0;
    install(SIGUSR1, count, SA_RESETHAND);
    raise(SIGUSR1);
    struct sigaction now;
    sigaction(SIGUSR1, NULL, &now);
    printf("resethand: hits=%d dfl=%d\n", hits, now.sa_handler == SIG_DFL);

    /* SA_NODEFER: the handler's own signal nests */
    install(SIGUSR1, nested, SA_NODEFER);
    reraise = 1;
    raise(SIGUSR1);
    printf("nodefer: max_depth=%d\n", max_depth);
    max_depth = depth = 0;
    install(SIGUSR1, nested, 0);
    reraise = 1;
    raise(SIGUSR1);
    printf("defer: max_depth=%d\n", max_depth);

    /* blocked, pending, delivered on unblock */
    hits = 0;
    install(SIGUSR1, count, 0);
    sigset_t set, old, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &old);
    raise(SIGUSR1);
    sigpending(&pend);
    printf("blocked: hits=%d pending=%d\n", hits, sigismember(&pend, SIGUSR1));
    sigprocmask(SIG_SETMASK, &old, NULL);
    sigpending(&pend);
    printf("unblocked: hits=%d pending=%d\n", hits, sigismember(&pend, SIGUSR1));

    /* an ignored signal: nothing happens, nothing is pending */
    signal(SIGUSR2, SIG_IGN);
    raise(SIGUSR2);
    sigpending(&pend);
    printf("ignored: pending=%d\n", sigismember(&pend, SIGUSR2));

    /* sigaltstack + SA_ONSTACK */
    static char alt[65536];
    stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt, .ss_flags = 0};
    printf("sigaltstack: %d\n", sigaltstack(&ss, NULL));
    install(SIGUSR1, where, SA_ONSTACK);
    raise(SIGUSR1);
    printf("onstack: %d\n", handler_sp > (uintptr_t)alt && handler_sp < (uintptr_t)alt + sizeof alt);
    install(SIGUSR1, where, 0);
    raise(SIGUSR1);
    printf("offstack: %d\n", !(handler_sp > (uintptr_t)alt && handler_sp < (uintptr_t)alt + sizeof alt));
    stack_t cur;
    sigaltstack(NULL, &cur);
    printf("altstack query: size_ok=%d flags=%d\n", cur.ss_size == sizeof alt, cur.ss_flags);

    /* sigsuspend: wait with SIGUSR1 unblocked; it returns -1 EINTR after the handler */
    hits = 0;
    install(SIGUSR1, count, 0);
    sigprocmask(SIG_BLOCK, &set, &old);
    raise(SIGUSR1);
    sigset_t none;
    sigemptyset(&none);
    int r = sigsuspend(&none);
    sigset_t after;
    sigprocmask(SIG_SETMASK, NULL, &after);
    printf("sigsuspend: r=%d eintr=%d hits=%d mask_back=%d\n", r, errno == EINTR, hits,
           sigismember(&after, SIGUSR1));

    /* sigtimedwait: takes a pending blocked signal; times out with EAGAIN */
    raise(SIGUSR1);
    siginfo_t si;
    struct timespec ts = {0, 50 * 1000 * 1000};
    r = sigtimedwait(&set, &si, &ts);
    printf("sigtimedwait: r=%d signo=%d code=%d hits=%d\n", r, si.si_signo, si.si_code, hits);
    r = sigtimedwait(&set, &si, &ts);
    printf("sigtimedwait timeout: r=%d eagain=%d\n", r, errno == EAGAIN);
    sigprocmask(SIG_SETMASK, &old, NULL);

    /* siglongjmp restores the mask saved by sigsetjmp */
    install(SIGUSR1, jump_out, 0);
    if (sigsetjmp(jump, 1) == 0) {
        raise(SIGUSR1);
        printf("not reached\n");
    }
    sigprocmask(SIG_SETMASK, NULL, &after);
    printf("siglongjmp: usr1_blocked=%d\n", sigismember(&after, SIGUSR1));

    /* SIGSEGV and SIGFPE handlers that siglongjmp out of the fault */
    install(SIGSEGV, jump_out, 0);
    int sig = sigsetjmp(jump, 1);
    if (sig == 0) {
        *(volatile int *)16 = 1;
        printf("not reached\n");
    }
    printf("segv: sig=%d\n", sig);
    install(SIGFPE, jump_out, 0);
    volatile int zero = 0;
    sig = sigsetjmp(jump, 1);
    if (sig == 0) {
        volatile int q = 10 / zero;
        (void)q;
        printf("not reached\n");
    }
    printf("fpe: sig=%d\n", sig);

    /* the FPU state is the same after a handler that used the FPU */
    install(SIGUSR1, fpu_user, 0);
    volatile double a = 1.0 / 3.0;
    long double b = 2.0L / 3.0L;
    double c = a * 7.0;
    raise(SIGUSR1);
    long double b2 = b * 3.0L;
    printf("fpu: c=%.15f b2=%.15Lf a=%.17g\n", c * 1.0, b2, a);
    return 0;
}
