/* Prints the floating-point exception flags (fetestexcept) that arithmetic raises: SSE and
 * x87 on x86_64, x87 on i386 (-m32 does double math on the x87), and whether they survive
 * fegetenv/fesetenv and feholdexcept/feupdateenv; with the argument "signal", whether they
 * survive a signal handler that raises its own (qemu-i386 7.2 loses them there, Linux keeps
 * them: that case is checked against Linux's output, not qemu's).
 * The x87 status word and MXCSR are also printed apart (IE ZE OE UE PE bits only: DE is
 * not emulated, and the condition/top bits are not exception flags). */
#include <fenv.h>
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define FLAGS_IZOUP 0x3d

static volatile double d0 = 0.0, d1 = 1.0, d3 = 3.0, dneg = -1.0, dbig = 1e308, dtiny = 1e-308;
static volatile float f0 = 0.0f, f1 = 1.0f, f3 = 3.0f, fbig = 3e38f, ftiny = 1e-38f;
static volatile long double l0 = 0.0L, l1 = 1.0L, l3 = 3.0L, lbig = LDBL_MAX, ltiny = LDBL_MIN;
static volatile double sink;
static volatile long double lsink;
static volatile int isink;
static volatile long long llsink;

static unsigned x87_flags(void) {
    uint16_t sw;
    __asm__ volatile("fnstsw %0" : "=m"(sw));
    return sw & FLAGS_IZOUP;
}

static unsigned sse_flags(void) {
#ifdef __x86_64__
    uint32_t mxcsr;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    return mxcsr & FLAGS_IZOUP;
#else
    return 0; /* an i386 program without SSE math: MXCSR is not compared */
#endif
}

static void names(int e, char *out) {
    static const struct { int bit; char c; } all[] = {
        {FE_INVALID, 'I'}, {FE_DIVBYZERO, 'Z'}, {FE_OVERFLOW, 'O'},
        {FE_UNDERFLOW, 'U'}, {FE_INEXACT, 'P'}};
    int n = 0;
    for (unsigned i = 0; i < sizeof all / sizeof all[0]; i++)
        if (e & all[i].bit) out[n++] = all[i].c;
    if (n == 0) out[n++] = '-';
    out[n] = 0;
}

/* Reports the flags raised since the last feclearexcept, then clears them. */
static void show(const char *what) {
    char s[8];
    names(fetestexcept(FE_ALL_EXCEPT), s);
    printf("%-22s fe=%-5s x87=%#04x sse=%#04x\n", what, s, x87_flags(), sse_flags());
    feclearexcept(FE_ALL_EXCEPT);
    if (fetestexcept(FE_ALL_EXCEPT) != 0) printf("  feclearexcept left %#x\n",
                                                 fetestexcept(FE_ALL_EXCEPT));
}

static void handler(int sig) {
    (void)sig;
    sink = d1 / d0;
    lsink = l0 / l0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "signal") == 0) {
        signal(SIGUSR1, handler);
        sink = d1 / d3;
        raise(SIGUSR1);
        show("after signal handler");
        return 0;
    }
    feclearexcept(FE_ALL_EXCEPT);
    show("start");
    sink = d1 + d1;                 show("double 1+1");
    sink = d1 / d0;                 show("double 1/0");
    sink = d0 / d0;                 show("double 0/0");
    sink = sqrt(dneg);              show("double sqrt(-1)");
    sink = dbig * 10;               show("double overflow");
    sink = dtiny / 1e10;            show("double underflow");
    sink = d1 / d3;                 show("double 1/3");
    sink = d1 / d3 * 3;             show("double 1/3*3");
    isink = (int)(d0 / d0 * 0);     show("double (int)nan");
    feclearexcept(FE_ALL_EXCEPT);
    isink = (int)(dbig);            show("double (int)1e308");
    sink = d0 / d0; feclearexcept(FE_ALL_EXCEPT);
    isink = sink < d1;              show("double nan<1");
    isink = sink == d1;             show("double nan==1");
    sink = f1 / f0;                 show("float 1/0");
    sink = f0 / f0;                 show("float 0/0");
    sink = (float)(fbig * f3);      show("float overflow");
    sink = (float)(ftiny / f3 / f3); show("float underflow");
    sink = f1 / f3;                 show("float 1/3");
    lsink = l1 / l0;                show("ldouble 1/0");
    lsink = l0 / l0;                show("ldouble 0/0");
    lsink = sqrtl(-l1);             show("ldouble sqrt(-1)");
    lsink = lbig * 2;               show("ldouble overflow");
    lsink = ltiny / 1e10L;          show("ldouble underflow");
    lsink = l1 / l3;                show("ldouble 1/3");
    llsink = (long long)(l0 / l0);  show("ldouble (llong)nan");
    feclearexcept(FE_ALL_EXCEPT);
    sink = (double)(lbig);          show("ldouble->double big");
    sink = (double)(l1 / l3);       show("ldouble->double 1/3");

    int each[] = {FE_INVALID, FE_DIVBYZERO, FE_OVERFLOW, FE_UNDERFLOW, FE_INEXACT};
    for (unsigned i = 0; i < 5; i++) {
        char label[32], s[8];
        names(each[i], s);
        snprintf(label, sizeof label, "feraiseexcept(%s)", s);
        feraiseexcept(each[i]);
        show(label);
    }

    fexcept_t saved;
    sink = d1 / d0;
    fegetexceptflag(&saved, FE_ALL_EXCEPT);
    feclearexcept(FE_ALL_EXCEPT);
    fesetexceptflag(&saved, FE_ALL_EXCEPT);
    show("fesetexceptflag");

    fenv_t env;
    sink = dbig * 10;
    fegetenv(&env);
    feclearexcept(FE_ALL_EXCEPT);
    fesetenv(&env);
    show("fegetenv/fesetenv");

    sink = d0 / d0;
    feholdexcept(&env);
    printf("feholdexcept clears %d\n", fetestexcept(FE_ALL_EXCEPT) == 0);
    sink = d1 / d0;
    feupdateenv(&env);
    show("feupdateenv merges");
    return 0;
}
