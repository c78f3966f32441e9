/* i386's pre-rt signal calls, as old binaries and some static libcs still make them:
 * signal, sigaction, sigprocmask, sigpending, sigsuspend, sgetmask/ssetmask (raw syscalls;
 * glibc itself uses the rt_ forms). Built for i386 only. */
#include "common.h"
#include <signal.h>
#include <sys/syscall.h>

#ifdef __i386__
/* The kernel's struct old_sigaction (arch/x86/include/asm/signal.h, i386). */
struct old_sa { unsigned long handler, mask, flags, restorer; };

static volatile int hits, last;
static volatile unsigned long seen_mask;

static void on_sig(int sig) {
    hits++;
    last = sig;
    seen_mask = syscall(SYS_sgetmask);
}

static int t_sigaction(int argc, char **argv) {
    struct old_sa sa = {(unsigned long)on_sig, 1UL << (SIGUSR2 - 1), 0, 0}, old;
    memset(&old, 0xff, sizeof old);
    CALL("sigaction set", syscall(SYS_sigaction, SIGUSR1, &sa, &old));
    printf("old handler is SIG_DFL: %d\n", old.handler == 0);
    CALL("sigaction get", syscall(SYS_sigaction, SIGUSR1, NULL, &old));
    printf("handler ours: %d mask %#lx flags %#lx\n", old.handler == (unsigned long)on_sig,
           old.mask, old.flags);
    CALL("sigaction SIGKILL", syscall(SYS_sigaction, SIGKILL, &sa, NULL));
    CALL("sigaction 0", syscall(SYS_sigaction, 0, NULL, &old));
    kill(getpid(), SIGUSR1);
    /* SIGUSR1 itself (no SA_NODEFER) and SIGUSR2 (sa_mask) were blocked in the handler */
    printf("hits %d last %d mask in handler %#lx\n", hits, last, seen_mask);
    return 0;
}

static int t_signal(int argc, char **argv) {
    long old = syscall(SYS_signal, SIGUSR2, (long)on_sig);
    printf("signal returned SIG_DFL: %d\n", old == 0);
    kill(getpid(), SIGUSR2);
    /* SA_RESETHAND | SA_NODEFER: the handler ran with SIGUSR2 unblocked, then reset */
    printf("hits %d last %d mask in handler %#lx\n", hits, last, seen_mask);
    struct old_sa cur;
    syscall(SYS_sigaction, SIGUSR2, NULL, &cur);
    printf("reset to SIG_DFL: %d flags %#lx\n", cur.handler == 0, cur.flags);
    old = syscall(SYS_signal, SIGUSR2, (long)SIG_IGN);
    printf("previous: SIG_DFL %d\n", old == 0);
    kill(getpid(), SIGUSR2);
    printf("ignored: still here, hits %d\n", hits);
    return 0;
}

static int t_masks(int argc, char **argv) {
    unsigned long set = 1UL << (SIGUSR1 - 1), old = 0xdead;
    signal(SIGUSR1, on_sig);
    CALL("sigprocmask block", syscall(SYS_sigprocmask, SIG_BLOCK, &set, &old));
    printf("old %#lx\n", old);
    kill(getpid(), SIGUSR1);
    unsigned long pend = 0;
    CALL("sigpending", syscall(SYS_sigpending, &pend));
    printf("pending %#lx hits %d\n", pend, hits);
    printf("sgetmask %#lx\n", (unsigned long)syscall(SYS_sgetmask));
    CALL("ssetmask", syscall(SYS_ssetmask, 1UL << (SIGUSR2 - 1)));   /* unblocks SIGUSR1 */
    printf("after ssetmask hits %d mask %#lx\n", hits, (unsigned long)syscall(SYS_sgetmask));
    CALL("sigprocmask bad how", syscall(SYS_sigprocmask, 7, &set, NULL));
    set = 0;
    CALL("sigprocmask setmask", syscall(SYS_sigprocmask, SIG_SETMASK, &set, &old));
    printf("old %#lx\n", old);
    /* the rt mask's upper half is untouched by the old calls */
    sigset_t rt;
    sigemptyset(&rt);
    sigaddset(&rt, SIGRTMIN + 2);
    sigprocmask(SIG_BLOCK, &rt, NULL);
    set = 1UL << (SIGUSR1 - 1);
    syscall(SYS_sigprocmask, SIG_SETMASK, &set, NULL);
    sigprocmask(SIG_BLOCK, NULL, &rt);
    printf("rt signal still blocked: %d usr1 blocked: %d\n", sigismember(&rt, SIGRTMIN + 2),
           sigismember(&rt, SIGUSR1));
    return 0;
}

static int t_sigsuspend(int argc, char **argv) {
    unsigned long set = 1UL << (SIGALRM - 1);
    signal(SIGALRM, on_sig);
    syscall(SYS_sigprocmask, SIG_BLOCK, &set, NULL);
    alarm(1);
    long r = syscall(SYS_sigsuspend, 0, 0, 0UL);      /* i386: the mask is the third arg */
    printf("sigsuspend %ld %s hits %d last %d\n", r, ename(errno), hits, last);
    printf("mask restored %#lx\n", (unsigned long)syscall(SYS_sgetmask));
    return 0;
}

static const struct subtest tests[] = {
    {"sigaction", t_sigaction}, {"signal", t_signal}, {"masks", t_masks},
    {"sigsuspend", t_sigsuspend},
};
#else
static int t_none(int argc, char **argv) { return 2; }
static const struct subtest tests[] = {{"none", t_none}};
#endif

RUN_SUBTESTS(tests)
