/* Unmasked floating-point exceptions trap: after feenableexcept() an SSE divsd raises #XM at
 * the instruction (destination not written) and an x87 fdiv raises #MF at the next waiting
 * x87 instruction; Linux sends SIGFPE with FPE_FLTINV/FLTDIV/FLTOVF/FLTUND/FLTRES. For each
 * of the five exceptions and both units the handler prints the signal, si_code, whether
 * si_addr and the saved ip are the expected instruction and (SSE) whether xmm0 kept its
 * value, then siglongjmp's out. Also: the masks after the handler (Linux resets the FPU for
 * a handler), a flag set while masked and unmasked later (x87: traps at the next waiting
 * instruction; SSE: does not) and fedisableexcept restoring the masked result. With the
 * argument sse or x87: 1/0 with no handler, which kills the process with SIGFPE. Built -O2 by
 * the tests, so the operations are asm. */
#define _GNU_SOURCE
#include <fenv.h>
#include <float.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

extern char sse_div_at[], x87_div_at[], x87_next_at[];
static sigjmp_buf jump;
static volatile int sse_case;
static volatile uint64_t xmm0_before;
static volatile char *expect_at;

/* xmm0 = a; xmm0 /= b (the instruction at sse_div_at); return xmm0 */
__attribute__((noinline, noclone, target("sse2"))) static double sse_div(double a, double b) {
    double r;
    __asm__ volatile("movsd %1, %%xmm0\n\t"
                     "movsd %2, %%xmm1\n\t"
                     ".globl sse_div_at\n"
                     "sse_div_at:\n\t"
                     "divsd %%xmm1, %%xmm0\n\t"
                     "movsd %%xmm0, %0"
                     : "=m"(r) : "m"(a), "m"(b) : "xmm0", "xmm1");
    return r;
}

/* st0 = a / b; the fstpt after it (x87_div_at) is the next waiting instruction */
__attribute__((noinline, noclone)) static long double x87_div(long double a, long double b) {
    long double r;
    __asm__ volatile("fldt %2\n\t"
                     "fldt %1\n\t"
                     "fdiv %%st(1), %%st\n\t"
                     ".globl x87_div_at\n"
                     "x87_div_at:\n\t"
                     "fstpt %0\n\t"
                     "fstp %%st(0)"
                     : "=m"(r) : "m"(a), "m"(b));
    return r;
}

/* one waiting x87 instruction (fld1 at x87_next_at) */
__attribute__((noinline, noclone)) static void x87_next(void) {
    __asm__ volatile(".globl x87_next_at\n"
                     "x87_next_at:\n\t"
                     "fld1\n\t"
                     "fstp %%st(0)" ::: "memory");
}

static uint64_t saved_xmm0(ucontext_t *uc) {
    uint64_t lo;
#ifdef __x86_64__
    memcpy(&lo, &uc->uc_mcontext.fpregs->_xmm[0], 8);
#else
    /* i386: 112-byte fsave header (magic 0 at 110), then the fxsave image: xmm0 at 160 */
    memcpy(&lo, (char *)uc->uc_mcontext.fpregs + 112 + 160, 8);
#endif
    return lo;
}

static uintptr_t saved_ip(ucontext_t *uc) {
#ifdef __x86_64__
    return uc->uc_mcontext.gregs[REG_RIP];
#else
    return uc->uc_mcontext.gregs[REG_EIP];
#endif
}

static void on_fpe(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = ctx;
    printf("  signal %d si_code %d addr %s ip %s", sig, si->si_code,
           si->si_addr == (void *)expect_at ? "ok" : "wrong",
           saved_ip(uc) == (uintptr_t)expect_at ? "ok" : "wrong");
    if (sse_case)
        printf(" xmm0 %s", saved_xmm0(uc) == xmm0_before ? "kept" : "written");
    printf(" enabled-in-handler %#x\n", fegetexcept());
    siglongjmp(jump, 1);
}

static void show_flags(void) {
    int f = fetestexcept(FE_ALL_EXCEPT);
    printf("  flags%s%s%s%s%s\n", f & FE_INVALID ? " I" : "", f & FE_DIVBYZERO ? " Z" : "",
           f & FE_OVERFLOW ? " O" : "", f & FE_UNDERFLOW ? " U" : "",
           f & FE_INEXACT ? " P" : "");
}

static void sse_case_run(const char *what, int except, double a, double b) {
    volatile double r = 0;
    printf("sse %s\n", what);
    feclearexcept(FE_ALL_EXCEPT);
    if (sigsetjmp(jump, 1) == 0) {
        feenableexcept(except);
        sse_case = 1;
        memcpy((void *)&xmm0_before, &a, 8);
        expect_at = sse_div_at;
        r = sse_div(a, b);
        printf("  no signal, result %a\n", r);
    }
    printf("  enabled after %#x\n", fegetexcept());
    fedisableexcept(FE_ALL_EXCEPT);
    feclearexcept(FE_ALL_EXCEPT);
    r = sse_div(a, b);
    printf("  masked result %a\n", r);
    show_flags();
}

static void x87_case_run(const char *what, int except, long double a, long double b) {
    volatile long double r = 0;
    printf("x87 %s\n", what);
    feclearexcept(FE_ALL_EXCEPT);
    if (sigsetjmp(jump, 1) == 0) {
        feenableexcept(except);
        sse_case = 0;
        expect_at = x87_div_at;
        r = x87_div(a, b);
        printf("  no signal, result %La\n", r);
    }
    printf("  enabled after %#x\n", fegetexcept());
    fedisableexcept(FE_ALL_EXCEPT);
    feclearexcept(FE_ALL_EXCEPT);
    r = x87_div(a, b);
    printf("  masked result %La\n", r);
    show_flags();
}

int main(int argc, char **argv) {
    if (argc > 1) { /* "sse" or "x87": the default action, no handler (killed by SIGFPE) */
        feenableexcept(FE_DIVBYZERO);
        if (strcmp(argv[1], "x87") == 0)
            x87_div(1.0L, 0.0L);
        else
            sse_div(1.0, 0.0);
        printf("survived\n");
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fpe;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGFPE, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    sse_case_run("1/0 divbyzero", FE_DIVBYZERO, 1.0, 0.0);
    sse_case_run("0/0 invalid", FE_INVALID, 0.0, 0.0);
    sse_case_run("big/small overflow", FE_OVERFLOW, 1e308, 1e-308);
    sse_case_run("small/big underflow", FE_UNDERFLOW, 1e-300, 3e10);
    sse_case_run("1/3 inexact", FE_INEXACT, 1.0, 3.0);
    sse_case_run("1/3 with divbyzero unmasked", FE_DIVBYZERO, 1.0, 3.0);
    sse_case_run("1/0 with all unmasked", FE_ALL_EXCEPT, 1.0, 0.0);

    x87_case_run("1/0 divbyzero", FE_DIVBYZERO, 1.0L, 0.0L);
    x87_case_run("0/0 invalid", FE_INVALID, 0.0L, 0.0L);
    x87_case_run("max/0.5 overflow", FE_OVERFLOW, LDBL_MAX, 0.5L);
    x87_case_run("min/3 underflow", FE_UNDERFLOW, LDBL_MIN, 3.0L);
    x87_case_run("1/3 inexact", FE_INEXACT, 1.0L, 3.0L);
    x87_case_run("1/3 with divbyzero unmasked", FE_DIVBYZERO, 1.0L, 3.0L);
    x87_case_run("1/0 with all unmasked", FE_ALL_EXCEPT, 1.0L, 0.0L);

    /* a flag raised while masked, then unmasked: the x87 traps at the next waiting
     * instruction, SSE only when an instruction raises it again */
    printf("x87 flag set before unmasking\n");
    feclearexcept(FE_ALL_EXCEPT);
    x87_div(1.0L, 0.0L);
    if (sigsetjmp(jump, 1) == 0) {
        feenableexcept(FE_DIVBYZERO);
        sse_case = 0;
        expect_at = x87_next_at;
        x87_next();
        printf("  no signal\n");
    }
    fedisableexcept(FE_ALL_EXCEPT);
    printf("sse flag set before unmasking\n");
    feclearexcept(FE_ALL_EXCEPT);
    sse_div(1.0, 0.0);
    if (sigsetjmp(jump, 1) == 0) {
        feenableexcept(FE_DIVBYZERO);
        sse_case = 1;
        expect_at = sse_div_at;
        double one = 1.0;
        memcpy((void *)&xmm0_before, &one, 8);
        printf("  result %a\n", sse_div(1.0, 3.0));
        printf("  no signal\n");
    }
    fedisableexcept(FE_ALL_EXCEPT);
    show_flags();
    return 0;
}
