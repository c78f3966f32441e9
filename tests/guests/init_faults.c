/* pid 1 is init (signals it has no handler for are discarded), orphans go to pid 1, and
 * CPU faults become signals: stores to read-only pages (SEGV_ACCERR), idiv overflow and
 * repeated exceptions (SIGFPE, not a double fault). One mode per argv[1]. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static sigjmp_buf jb;
static volatile int got_code;
static void *volatile got_addr;

static void on_fault(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    got_code = si->si_code;
    got_addr = si->si_addr;
    siglongjmp(jb, sig);
}

static void catch(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(sig, &sa, NULL);
}

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {}
}

/* A store through p: the signal it raised (0: none) and whether si_addr was p. */
static int store(volatile char *p, int *addr_ok) {
    int sig = sigsetjmp(jb, 1);
    if (sig == 0) {
        *p = 1;
        return 0;
    }
    *addr_ok = got_addr == (void *)p;
    return sig;
}

static int t_self(void) {
    int sigs[] = {SIGTERM, SIGKILL, SIGSTOP, SIGTSTP, SIGUSR1, SIGINT, SIGSEGV};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        kill(getpid(), sigs[i]);
        raise(sigs[i]);
        kill(1, sigs[i]);
        printf("survived %d\n", sigs[i]);
    }
    struct itimerval it = {{0, 0}, {0, 10000}};
    setitimer(ITIMER_REAL, &it, NULL);
    nap_ms(60);
    printf("survived alarm\n");
    sigset_t set, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR2);
    sigpending(&pend);
    printf("blocked one queued: %d\n", sigismember(&pend, SIGUSR2));
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    sigpending(&pend);
    printf("unblocked: discarded %d\n", !sigismember(&pend, SIGUSR2));
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR2);
    struct timespec zero = {0, 0};
    printf("sigtimedwait takes it: %d\n", sigtimedwait(&set, NULL, &zero) == SIGUSR2);
    return 0;
}

static int t_child(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        kill(1, SIGKILL);
        kill(1, SIGTERM);
        kill(getppid(), SIGSTOP);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    printf("pid 1 survived its child's SIGKILL/SIGTERM/SIGSTOP, child exited %d\n",
           WEXITSTATUS(st));
    fflush(stdout);
    pid = fork();
    if (pid == 0) abort();
    waitpid(pid, &st, 0);
    printf("abort in a child: signaled %d sig %d\n", WIFSIGNALED(st), WTERMSIG(st));
    return 0;
}

static volatile sig_atomic_t terms;
static void on_term(int sig) { (void)sig; terms++; }

/* For Machine.stop: "alone" (no handler), "handler" (exits 3 on SIGTERM), "parent" (a child
 * sleeps; pid 1 waits for it and exits 7 once it is gone). */
static int t_stop(const char *how) {
    if (!strcmp(how, "handler")) signal(SIGTERM, on_term);
    pid_t pid = 0;
    if (!strcmp(how, "parent")) {
        pid = fork();
        if (pid == 0) {
            for (;;) pause();
        }
    }
    printf("ready\n");
    fflush(stdout);
    if (pid) {
        int st;
        waitpid(pid, &st, 0);
        printf("child: signaled %d sig %d\n", WIFSIGNALED(st), WTERMSIG(st));
        fflush(stdout);
        return 7;
    }
    while (!terms) pause();
    printf("SIGTERM handled\n");
    fflush(stdout);
    return 3;
}

static int t_orphan(void) {
    int out[2], seen[2];
    pipe(out);
    pipe(seen);
    fflush(stdout);
    pid_t mid = fork();
    if (mid == 0) {
        pid_t me = getpid();
        if (fork() == 0) {
            pid_t first = getppid();
            write(seen[1], "s", 1);
            for (int i = 0; i < 5000 && getppid() == first; i++) nap_ms(1);
            char msg[80];
            int n = snprintf(msg, sizeof msg, "first %d now pid 1 %d\n", first == me,
                             getppid() == 1);
            write(out[1], msg, n);
            _exit(0);
        }
        char c;
        read(seen[0], &c, 1);
        _exit(0);
    }
    close(out[1]);
    waitpid(mid, NULL, 0);
    char buf[80];
    int n = read(out[0], buf, sizeof buf);
    if (n > 0) fwrite(buf, 1, n, stdout);
    int st;
    printf("pid 1 reaps the orphan: %d\n", wait(&st) > 0 && WIFEXITED(st));
    return 0;
}

static int t_prot(void) {
    catch(SIGSEGV);
    long pg = 4096;
    char *p = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int ok = 0;
    printf("rw store: sig %d\n", store(p, &ok));
    printf("mprotect R: %d\n", mprotect(p, pg, PROT_READ));
    int sig = store(p + 8, &ok);
    printf("ro store: sig %d accerr %d addr ok %d, value kept %d\n", sig,
           got_code == SEGV_ACCERR, ok, p[8] == 0);
    printf("next page still rw: sig %d\n", store(p + pg, &ok));
    sig = sigsetjmp(jb, 1);
    if (sig == 0) { volatile char c = p[2 * pg]; (void)c; }
    printf("read of rw page: sig %d\n", sig);
    mprotect(p + 2 * pg, pg, PROT_NONE);
    sig = sigsetjmp(jb, 1);
    if (sig == 0) { volatile char c = p[2 * pg + 5]; (void)c; }
    printf("read of PROT_NONE page: sig %d accerr %d\n", sig, got_code == SEGV_ACCERR);
    int r = mprotect(p + 1, pg, PROT_READ);
    printf("unaligned mprotect: %d %s\n", r, strerrorname_np(errno));
    char *ro = mmap(NULL, pg, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("mmap PROT_READ store: sig %d\n", store(ro, &ok));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        int sig2 = store(p + 16, &ok);
        printf("child inherits read-only: sig %d\n", sig2);
        fflush(stdout);
        _exit(0);
    }
    waitpid(child, NULL, 0);
    mprotect(p, pg, PROT_READ | PROT_WRITE);
    printf("mprotect RW again: sig %d\n", store(p + 8, &ok));
    munmap(ro, pg);
    char *again = mmap(ro, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                       -1, 0);
    printf("remapped rw: same %d sig %d\n", again == ro, store(again, &ok));
    /* Many changes: the vCPU's log is emptied and its instance rebuilt on the way. */
    char *many = mmap(NULL, 64 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    int wrong = 0;
    for (int i = 0; i < 1500; i++) {
        char *q = many + (i % 64) * pg;
        mprotect(q, pg, PROT_READ);
        if (i % 100 == 0 && store(q, &ok) != SIGSEGV) wrong++;
        mprotect(q, pg, PROT_READ | PROT_WRITE);
        if (i % 100 == 50 && store(q, &ok) != 0) wrong++;
    }
    printf("1500 toggles: wrong %d\n", wrong);
    return 0;
}

/* Past the cap: taking write away on 300 separate pages still succeeds (not enforced
 * beyond the cap); adding execute on more separate pages gives ENOMEM. */
static int t_cap(void) {
    long pg = 4096;
    char *p = mmap(NULL, 1400 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int failed = 0;
    for (int i = 0; i < 300; i++)
        if (mprotect(p + 2 * i * pg, pg, PROT_READ) != 0) failed++;
    printf("read-only x300: failed %d\n", failed);
    int enomem = 0;
    for (int i = 300; i < 700; i++)
        if (mprotect(p + 2 * i * pg, pg, PROT_READ | PROT_EXEC) != 0 && errno == ENOMEM)
            enomem++;
    printf("exec x400: some ENOMEM %d\n", enomem > 0);
    return 0;
}

static int t_fpe(void) {
    catch(SIGFPE);
    catch(SIGSEGV);
    volatile int zero = 0, x = 7, min = -2147483647 - 1, m1 = -1;
    int sig;
    for (int round = 0; round < 3; round++) {
        sig = sigsetjmp(jb, 1);
        if (sig == 0) x = x / zero;
        printf("x/0: sig %d intdiv %d\n", sig, got_code == FPE_INTDIV);
        sig = sigsetjmp(jb, 1);
        if (sig == 0) x = min / m1;
        printf("INT_MIN/-1: sig %d intdiv %d\n", sig, got_code == FPE_INTDIV);
        sig = sigsetjmp(jb, 1);
        if (sig == 0) __asm__ volatile("hlt");
        printf("hlt: sig %d\n", sig);
    }
    return 0;
}

/* For a saved state: a read-only page, "ready", then (after the restore) a store to it. */
static int t_saved(void) {
    catch(SIGSEGV);
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(p, 4096, PROT_READ);
    printf("ready\n");
    fflush(stdout);
    nap_ms(300);
    int ok = 0;
    int sig = store(p, &ok);
    printf("store after restore: sig %d accerr %d\n", sig, got_code == SEGV_ACCERR);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "self";
    if (!strcmp(mode, "self")) return t_self();
    if (!strcmp(mode, "child")) return t_child();
    if (!strcmp(mode, "stop")) return t_stop(argc > 2 ? argv[2] : "alone");
    if (!strcmp(mode, "orphan")) return t_orphan();
    if (!strcmp(mode, "prot")) return t_prot();
    if (!strcmp(mode, "cap")) return t_cap();
    if (!strcmp(mode, "fpe")) return t_fpe();
    if (!strcmp(mode, "saved")) return t_saved();
    if (!strcmp(mode, "fault")) { *(volatile int *)16 = 1; return 0; }
    printf("unknown mode %s\n", mode);
    return 2;
}
