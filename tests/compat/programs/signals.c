/* Signals: handlers and their flags, masks, timers, waits, faults, EINTR, SIGPIPE. */
#include "common.h"
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/time.h>
#include <sys/wait.h>

static volatile sig_atomic_t hits, last_sig, depth, max_depth;
static char log_buf[256];
static volatile int log_len;

static void note(const char *s) {
    size_t n = strlen(s);
    if (log_len + n < sizeof log_buf) { memcpy(log_buf + log_len, s, n); log_len += n; }
}

static void flush_log(void) { printf("log: %.*s\n", log_len, log_buf); log_len = 0; }

static void on_sig(int sig) { hits++; last_sig = sig; note("h"); }

static void setup(int sig, void (*fn)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

static int t_handler(int argc, char **argv) {
    setup(SIGUSR1, on_sig, 0);
    note("a");
    raise(SIGUSR1);
    note("b");
    kill(getpid(), SIGUSR1);
    note("c");
    flush_log();
    printf("hits %d last %d\n", hits, last_sig);
    return 0;
}

static siginfo_t got_info;
static void on_info(int sig, siginfo_t *si, void *uc) { got_info = *si; hits++; }

static int t_siginfo(int argc, char **argv) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_info;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR2, &sa, NULL);
    kill(getpid(), SIGUSR2);
    printf("kill: signo %d code %s pid ok %d uid %d\n", got_info.si_signo,
           got_info.si_code == SI_USER ? "SI_USER" : "other", got_info.si_pid == getpid(),
           (int)got_info.si_uid);
    union sigval v = {.sival_int = 42};
    sigqueue(getpid(), SIGUSR2, v);
    printf("sigqueue: code %s value %d\n", got_info.si_code == SI_QUEUE ? "SI_QUEUE" : "other",
           got_info.si_value.sival_int);
    raise(SIGUSR2);
    printf("raise: code %s\n", got_info.si_code == SI_TKILL ? "SI_TKILL" : "other");
    return 0;
}

static int t_resethand(int argc, char **argv) {
    setup(SIGUSR1, on_sig, SA_RESETHAND);
    raise(SIGUSR1);
    struct sigaction old;
    sigaction(SIGUSR1, NULL, &old);
    printf("hits %d, now default: %d\n", hits, old.sa_handler == SIG_DFL);
    fflush(stdout);
    raise(SIGUSR1);  /* default action: terminate */
    printf("not reached\n");
    return 0;
}

static void on_nested(int sig) {
    depth++;
    if (depth > max_depth) max_depth = depth;
    note("<");
    if (hits++ == 0) raise(sig);
    note(">");
    depth--;
}

static int t_nodefer(int argc, char **argv) {
    setup(SIGUSR1, on_nested, SA_NODEFER);
    raise(SIGUSR1);
    flush_log();
    printf("nodefer max depth %d\n", max_depth);
    hits = 0; max_depth = 0;
    setup(SIGUSR1, on_nested, 0);
    raise(SIGUSR1);
    flush_log();
    printf("deferred max depth %d\n", max_depth);
    return 0;
}

static int t_pending(int argc, char **argv) {
    setup(SIGUSR1, on_sig, 0);
    sigset_t set, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR1);
    raise(SIGUSR1);       /* standard signals do not queue */
    sigpending(&pend);
    printf("pending %d hits %d\n", sigismember(&pend, SIGUSR1), hits);
    note("u");
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    note("d");
    sigpending(&pend);
    flush_log();
    printf("pending %d hits %d\n", sigismember(&pend, SIGUSR1), hits);
    return 0;
}

static int t_ignored(int argc, char **argv) {
    signal(SIGUSR1, SIG_IGN);
    raise(SIGUSR1);
    kill(getpid(), SIGUSR1);
    printf("alive after ignored signal\n");
    sigset_t set, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR1);
    sigpending(&pend);
    printf("blocked+ignored pending: %d\n", sigismember(&pend, SIGUSR1));
    int refused = signal(SIGKILL, SIG_IGN) == SIG_ERR;
    printf("SIGKILL cannot be ignored: %d %s\n", refused, ename(errno));
    return 0;
}

static char *alt_base;
static size_t alt_size = 1 << 16;
static volatile int on_alt, ss_flags;
static void on_altsig(int sig) {
    char here;
    on_alt = &here >= alt_base && &here < alt_base + alt_size;
    stack_t cur;
    sigaltstack(NULL, &cur);
    ss_flags = cur.ss_flags;
}

static int t_altstack(int argc, char **argv) {
    alt_base = malloc(alt_size);
    stack_t ss = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0};
    printf("sigaltstack: %d\n", sigaltstack(&ss, NULL));
    setup(SIGUSR1, on_altsig, SA_ONSTACK);
    raise(SIGUSR1);
    printf("handler on alt stack: %d, SS_ONSTACK inside: %d\n", on_alt,
           (ss_flags & SS_ONSTACK) != 0);
    stack_t cur;
    sigaltstack(NULL, &cur);
    printf("outside: flags %d size ok %d\n", cur.ss_flags, cur.ss_size == alt_size);
    setup(SIGUSR2, on_altsig, 0);
    raise(SIGUSR2);
    printf("without SA_ONSTACK on alt stack: %d\n", on_alt);
    stack_t tiny = {.ss_sp = alt_base, .ss_size = 16, .ss_flags = 0};
    CALL("too small", sigaltstack(&tiny, NULL));
    return 0;
}

static int t_alarm(int argc, char **argv) {
    setup(SIGALRM, on_sig, 0);
    printf("alarm(1) returns %d\n", alarm(1));
    printf("alarm(1) again returns %d\n", alarm(1));
    double t0 = now_s();
    int r = pause(), e = errno;
    double dt = now_s() - t0;
    printf("pause %d %s, sig %d, waited 0.5..3s: %d\n", r, ename(e), last_sig,
           dt > 0.5 && dt < 3);
    printf("cancel: %d\n", alarm(0));
    return 0;
}

static int t_itimer(int argc, char **argv) {
    setup(SIGALRM, on_sig, SA_RESTART);
    struct itimerval it = {.it_interval = {0, 30000}, .it_value = {0, 30000}};
    printf("setitimer: %d\n", setitimer(ITIMER_REAL, &it, NULL));
    sigset_t none;
    sigemptyset(&none);
    double t0 = now_s();
    while (hits < 3) sigsuspend(&none);
    double dt = now_s() - t0;
    struct itimerval cur;
    getitimer(ITIMER_REAL, &cur);
    printf("ticks %d after 0.06..2s: %d interval %ld\n", hits, dt > 0.06 && dt < 2,
           (long)cur.it_interval.tv_usec);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, &cur);
    printf("old interval %ld\n", (long)cur.it_interval.tv_usec);
    return 0;
}

static int t_sigsuspend(int argc, char **argv) {
    setup(SIGALRM, on_sig, 0);
    sigset_t block, old, wait_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    sigprocmask(SIG_BLOCK, &block, &old);
    struct itimerval it = {.it_interval = {0, 0}, .it_value = {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    usleep(100000);            /* fires while blocked: stays pending */
    printf("hits while blocked %d\n", hits);
    wait_mask = old;
    int r = sigsuspend(&wait_mask), e = errno;
    printf("sigsuspend %d %s hits %d\n", r, ename(e), hits);
    sigset_t now;
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("mask restored: %d\n", sigismember(&now, SIGALRM));
    return 0;
}

static int t_sigtimedwait(int argc, char **argv) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR1);
    siginfo_t si;
    struct timespec ts = {1, 0};
    int r = sigtimedwait(&set, &si, &ts);
    printf("sigtimedwait %d code %s\n", r, si.si_code == SI_TKILL ? "SI_TKILL" : "other");
    struct timespec short_ts = {0, 50000000};
    double t0 = now_s();
    r = sigtimedwait(&set, &si, &short_ts);
    int e = errno;
    printf("timeout %d %s waited: %d\n", r, ename(e), now_s() - t0 > 0.04);
    raise(SIGUSR1);
    int sig = 0;
    int w = sigwait(&set, &sig);
    printf("sigwait %d sig %d\n", w, sig);
    return 0;
}

static sigjmp_buf jb;
static void on_jump(int sig) { siglongjmp(jb, sig); }

static int t_siglongjmp(int argc, char **argv) {
    setup(SIGUSR1, on_jump, 0);
    sigset_t now;
    int r = sigsetjmp(jb, 1);
    if (r == 0) { raise(SIGUSR1); printf("not reached\n"); }
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("savemask=1: back with %d, USR1 blocked: %d\n", r, sigismember(&now, SIGUSR1));
    r = sigsetjmp(jb, 0);
    if (r == 0) { raise(SIGUSR1); printf("not reached\n"); }
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("savemask=0: back with %d, USR1 blocked: %d\n", r, sigismember(&now, SIGUSR1));
    return 0;
}

static volatile int fault_code;
static void *volatile fault_addr;
static void on_fault(int sig, siginfo_t *si, void *uc) {
    fault_code = si->si_code;
    fault_addr = si->si_addr;
    siglongjmp(jb, sig);
}

static void setup_info(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(sig, &sa, NULL);
}

static int t_segv(int argc, char **argv) {
    setup_info(SIGSEGV);
    int r = sigsetjmp(jb, 1);
    if (r == 0) { *(volatile int *)16 = 1; }
    printf("sig %d code %s addr %p\n", r, fault_code == SEGV_MAPERR ? "SEGV_MAPERR" : "other",
           fault_addr);
    char *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r = sigsetjmp(jb, 1);
    if (r == 0) { ro[8] = 1; }
    printf("sig %d code %s addr ok %d\n", r, fault_code == SEGV_ACCERR ? "SEGV_ACCERR" : "other",
           fault_addr == ro + 8);
    return 0;
}

static int t_fpe(int argc, char **argv) {
    setup_info(SIGFPE);
    volatile int zero = 0, x = 7;
    int r = sigsetjmp(jb, 1);
    if (r == 0) { x = x / zero; }
    printf("sig %d code %s\n", r, fault_code == FPE_INTDIV ? "FPE_INTDIV" : "other");
    volatile int min = -2147483647 - 1, m1 = -1;
    r = sigsetjmp(jb, 1);
    if (r == 0) { x = min / m1; }
    printf("INT_MIN/-1: sig %d\n", r);
    return 0;
}

static int fds[2];
static void on_alarm_write(int sig) { hits++; if (hits >= 2) write(fds[1], "x", 1); }

static int t_eintr(int argc, char **argv) {
    pipe(fds);
    char c;
    setup(SIGALRM, on_alarm_write, 0);
    struct itimerval it = {.it_interval = {0, 0}, .it_value = {0, 30000}};
    setitimer(ITIMER_REAL, &it, NULL);
    int r = read(fds[0], &c, 1);
    printf("no SA_RESTART: read %d %s\n", r, ename(errno));
    setup(SIGALRM, on_alarm_write, SA_RESTART);
    setitimer(ITIMER_REAL, &it, NULL);
    r = read(fds[0], &c, 1);
    printf("SA_RESTART: read %d '%c' hits %d\n", r, r == 1 ? c : '?', hits);
    return 0;
}

static int t_sigpipe(int argc, char **argv) {
    int p[2];
    pipe(p);
    close(p[0]);
    signal(SIGPIPE, SIG_IGN);
    CALL("ignored: write", write(p[1], "x", 1));
    setup(SIGPIPE, on_sig, 0);
    errno = 0;
    ssize_t r = write(p[1], "x", 1);
    printf("handled: write %zd %s hits %d sig %d\n", r, ename(errno), hits, last_sig);
    signal(SIGPIPE, SIG_DFL);
    fflush(stdout);
    write(p[1], "x", 1);
    printf("not reached\n");
    return 0;
}

static int t_default(int argc, char **argv) {
    int sig = argc > 1 ? atoi(argv[1]) : SIGTERM;
    printf("raising %d\n", sig);
    fflush(stdout);
    raise(sig);
    printf("survived\n");
    return 0;
}

static int t_child_status(int argc, char **argv) {
    int sigs[] = {SIGTERM, SIGKILL, SIGSEGV, SIGUSR1, SIGABRT};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
        if (pid == 0) { signal(SIGABRT, SIG_DFL); raise(sigs[i]); _exit(0); }
        int st;
        waitpid(pid, &st, 0);
        printf("child raised %d: signaled %d termsig %d\n", sigs[i], WIFSIGNALED(st),
               WIFSIGNALED(st) ? WTERMSIG(st) : -1);
    }
    return 0;
}

/* -- ppoll, pselect6, epoll_pwait: the mask replaces the thread's for the wait ---------- */
static volatile sig_atomic_t usr2_in_handler = -1;
static void on_masked(int sig) {
    hits++;
    sigset_t m;
    sigprocmask(SIG_BLOCK, NULL, &m);
    usr2_in_handler = sigismember(&m, SIGUSR2);
}

static int mask_pipe[2], mask_ep = -1;

/* which: 0 ppoll, 1 pselect, 2 epoll_pwait, each waiting for mask_pipe to be readable. */
static int masked_wait(int which, const sigset_t *mask, int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    if (which == 0) {
        struct pollfd pfd = {.fd = mask_pipe[0], .events = POLLIN};
        return ppoll(&pfd, 1, &ts, mask);
    }
    if (which == 1) {
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(mask_pipe[0], &rd);
        return pselect(mask_pipe[0] + 1, &rd, NULL, NULL, &ts, mask);
    }
    struct epoll_event ev;
    return epoll_pwait(mask_ep, &ev, 1, ms, mask);
}

static void show_wait(const char *what, int r, int e) {
    sigset_t now, pend;
    sigprocmask(SIG_BLOCK, NULL, &now);
    sigpending(&pend);
    printf("  %s: %d %s hits %d; after: USR1 blocked %d USR2 blocked %d USR1 pending %d\n",
           what, r, r < 0 ? ename(e) : "", hits, sigismember(&now, SIGUSR1),
           sigismember(&now, SIGUSR2), sigismember(&pend, SIGUSR1));
}

static int t_pollmask(int argc, char **argv) {
    const char *names[] = {"ppoll", "pselect6", "epoll_pwait"};
    setup(SIGUSR1, on_masked, SA_RESTART);      /* SA_RESTART: these still give EINTR */
    setup(SIGALRM, on_masked, SA_RESTART);
    pipe(mask_pipe);
    mask_ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = mask_pipe[0]};
    epoll_ctl(mask_ep, EPOLL_CTL_ADD, mask_pipe[0], &ev);
    sigset_t orig, temp, keep;
    sigemptyset(&orig);
    sigaddset(&orig, SIGUSR1);
    sigaddset(&orig, SIGALRM);
    sigprocmask(SIG_SETMASK, &orig, NULL);
    keep = orig;
    sigemptyset(&temp);
    sigaddset(&temp, SIGUSR2);                  /* unblocks USR1 and ALRM, blocks USR2 */
    for (int which = 0; which < 3; which++) {
        printf("%s:\n", names[which]);
        hits = 0;
        usr2_in_handler = -1;
        raise(SIGUSR1);                         /* pending, blocked by the thread's mask */
        int r = masked_wait(which, &keep, 30), e = errno;
        show_wait("mask keeps it blocked", r, e);
        r = masked_wait(which, &temp, 5000), e = errno;
        show_wait("mask unblocks it", r, e);
        printf("  handler ran with the call's mask: %d\n", usr2_in_handler);
        raise(SIGUSR1);
        write(mask_pipe[1], "x", 1);            /* ready and a signal: ready wins */
        r = masked_wait(which, &temp, 5000), e = errno;
        show_wait("ready fd and pending signal", r, e);
        char c;
        read(mask_pipe[0], &c, 1);
        r = masked_wait(which, &temp, 0), e = errno;
        show_wait("zero timeout, pending signal", r, e);
        struct itimerval it = {.it_interval = {0, 0}, .it_value = {0, 30000}};
        setitimer(ITIMER_REAL, &it, NULL);      /* SIGALRM arrives during the wait */
        r = masked_wait(which, &temp, 5000), e = errno;
        show_wait("signal during the wait", r, e);
        r = masked_wait(which, NULL, 30), e = errno;
        show_wait("no mask", r, e);
    }
    return 0;
}

/* A child blocked in select, poll or pselect is stopped and continued (no handler: the call
 * runs again, on the sets and timeout it was given), then data arrives. */
static int t_stop_waits(int argc, char **argv) {
    int data[2], ready[2];
    pipe(data);
    pipe(ready);
    for (int which = 0; which < 3; which++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) { printf("fork: %s\n", ename(errno)); return 1; }
        if (pid == 0) {
            fd_set rd;
            FD_ZERO(&rd);
            FD_SET(data[0], &rd);
            struct timeval tv = {5, 0};
            struct timespec ts = {5, 0};
            struct pollfd pfd = {.fd = data[0], .events = POLLIN};
            write(ready[1], "r", 1);
            int r;
            if (which == 0) r = select(data[0] + 1, &rd, NULL, NULL, &tv);
            else if (which == 1) r = pselect(data[0] + 1, &rd, NULL, NULL, &ts, NULL);
            else r = poll(&pfd, 1, 5000);
            int set = which == 2 ? pfd.revents == POLLIN : FD_ISSET(data[0], &rd);
            printf("%s after stop and continue: %d %s, fd ready %d\n",
                   which == 0 ? "select" : which == 1 ? "pselect" : "poll", r,
                   r < 0 ? ename(errno) : "", set);
            char c;
            read(data[0], &c, 1);
            _exit(0);
        }
        char c;
        read(ready[0], &c, 1);
        usleep(50000);
        int st;
        kill(pid, SIGSTOP);
        waitpid(pid, &st, WUNTRACED);
        kill(pid, SIGCONT);
        usleep(50000);
        write(data[1], "d", 1);
        waitpid(pid, &st, 0);
    }
    return 0;
}

static struct subtest tests[] = {
    {"handler", t_handler}, {"siginfo", t_siginfo}, {"resethand", t_resethand},
    {"nodefer", t_nodefer}, {"pending", t_pending}, {"ignored", t_ignored},
    {"altstack", t_altstack}, {"alarm", t_alarm}, {"itimer", t_itimer},
    {"sigsuspend", t_sigsuspend}, {"sigtimedwait", t_sigtimedwait},
    {"siglongjmp", t_siglongjmp}, {"segv", t_segv}, {"fpe", t_fpe}, {"eintr", t_eintr},
    {"sigpipe", t_sigpipe}, {"default", t_default}, {"child_status", t_child_status},
    {"pollmask", t_pollmask}, {"stop_waits", t_stop_waits},
};
RUN_SUBTESTS(tests)
