/* Floating point: double and long double results, rounding modes, exception flags, and the
 * initial x87 control word / MXCSR (0x37f / 0x1f80 on Linux). */
#include "common.h"
#include <fenv.h>
#include <float.h>
#include <math.h>

static volatile double vd[] = {1.0, 3.0, 2.0, 0.1, 1e308, 7.0};
static volatile long double vl[] = {1.0L, 3.0L, 2.0L, 0.1L, 1e4000L, 7.0L};

static int t_double(int argc, char **argv) {
    double third = vd[0] / vd[1];
    printf("1/3 %.17g\n", third);
    printf("sqrt2 %.17g\n", sqrt(vd[2]));
    printf("0.1*3 %.17g\n", vd[3] * 3);
    double s = 0;
    for (int k = 1; k <= 1000; k++) s += vd[0] / k;
    printf("H1000 %.17g\n", s);
    printf("exp1 %.17g log7 %.17g sin1 %.17g\n", exp(vd[0]), log(vd[5]), sin(vd[0]));
    printf("pow %.17g atan2 %.17g\n", pow(vd[5], 0.5), atan2(vd[0], vd[1]));
    printf("overflow %.17g underflow %.17g\n", vd[4] * 10, 1e-308 / vd[4]);
    printf("nan %f inf %f -0 %g\n", sqrt(-vd[0]), vd[0] / (vd[0] - 1), -0.0 * vd[0]);
    printf("FLT_EVAL_METHOD %d\n", FLT_EVAL_METHOD);
    printf("rint %.1f lrint %ld fma %.17g\n", rint(2.5), lrint(3.5), fma(vd[3], vd[5], vd[3]));
    return 0;
}

static int t_ldouble(int argc, char **argv) {
    long double third = vl[0] / vl[1];
    printf("sizeof %zu LDBL_MANT_DIG %d\n", sizeof(long double), LDBL_MANT_DIG);
    printf("1/3 %.21Lg\n", third);
    printf("sqrt2 %.21Lg\n", sqrtl(vl[2]));
    printf("0.1L*3 %.21Lg\n", vl[3] * 3);
    long double s = 0;
    for (int k = 1; k <= 1000; k++) s += vl[0] / k;
    printf("H1000 %.21Lg\n", s);
    printf("expl1 %.21Lg logl7 %.21Lg\n", expl(vl[0]), logl(vl[5]));
    printf("sinl1 %.21Lg cosl1 %.21Lg\n", sinl(vl[0]), cosl(vl[0]));
    printf("big %.21Lg\n", vl[4] * vl[5]);
    printf("epsilon %.21Lg\n", LDBL_EPSILON);
    return 0;
}

static int t_fenv(int argc, char **argv) {
    printf("initial round %s\n", fegetround() == FE_TONEAREST ? "nearest" : "other");
    int modes[] = {FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO, FE_TONEAREST};
    const char *names[] = {"up", "down", "zero", "nearest"};
    for (int i = 0; i < 4; i++) {
        int set = fesetround(modes[i]);
        printf("fesetround(%s) %d get ok %d", names[i], set, fegetround() == modes[i]);
        printf(" 1/3 %.17g -1/3 %.17g", vd[0] / vd[1], -vd[0] / vd[1]);
        printf(" rint(2.5) %.1f L1/3 %.21Lg\n", rint(2.5), vl[0] / vl[1]);
    }
    feclearexcept(FE_ALL_EXCEPT);
    printf("clear: %#x\n", fetestexcept(FE_ALL_EXCEPT));
    volatile double r = vd[0] / (vd[0] - vd[0]);
    printf("1/0 -> divbyzero %d\n", fetestexcept(FE_DIVBYZERO) != 0);
    feclearexcept(FE_ALL_EXCEPT);
    r = vd[0] / vd[1];
    printf("1/3 -> inexact %d divbyzero %d\n", fetestexcept(FE_INEXACT) != 0,
           fetestexcept(FE_DIVBYZERO) != 0);
    feclearexcept(FE_ALL_EXCEPT);
    r = sqrt(-vd[2] + r * 0);
    printf("sqrt(-2) -> invalid %d\n", fetestexcept(FE_INVALID) != 0);
    feclearexcept(FE_ALL_EXCEPT);
    r = vd[4] * vd[4];
    printf("overflow %d inexact %d\n", fetestexcept(FE_OVERFLOW) != 0,
           fetestexcept(FE_INEXACT) != 0);
    feraiseexcept(FE_UNDERFLOW);
    printf("raised underflow %d\n", fetestexcept(FE_UNDERFLOW) != 0);
    fenv_t env;
    fegetenv(&env);
    feclearexcept(FE_ALL_EXCEPT);
    fesetenv(&env);
    printf("restored env keeps underflow %d\n", fetestexcept(FE_UNDERFLOW) != 0);
    return 0;
}

static int t_control(int argc, char **argv) {
    unsigned short cw = 0;
    unsigned int mxcsr = 0;
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    printf("x87 cw %#x mxcsr %#x\n", cw, mxcsr);
    unsigned short sw;
    __asm__ volatile("fnstsw %0" : "=m"(sw));
    printf("x87 sw %#x\n", sw);
    fesetround(FE_UPWARD);
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    printf("upward: cw %#x mxcsr %#x\n", cw, mxcsr);
    return 0;
}

static struct subtest tests[] = {
    {"double", t_double}, {"ldouble", t_ldouble}, {"fenv", t_fenv}, {"control", t_control},
};
RUN_SUBTESTS(tests)
