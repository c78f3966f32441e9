/* Prints the FPU state a program starts with and x87/SSE results that depend on it. */
#include <fenv.h>
#include <stdio.h>
#include <stdint.h>

int main(void) {
    uint16_t cw;
    uint32_t mxcsr;
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    printf("cw=0x%x mxcsr=0x%x\n", cw, mxcsr);
    volatile double a = 1.0, b = 3.0;
    printf("%.17g\n", a / b);
    volatile long double c = 1.0L, d = 3.0L;
    printf("%.21Lg\n", c / d);
    volatile long double e = 2.0L;
    printf("%.21Lg\n", e * c / d + 1e-19L);
    printf("round=%d\n", fegetround() == FE_TONEAREST);
    fesetround(FE_UPWARD);
    volatile double f = 1.0, g = 10.0;
    printf("%.17g\n", f / g);
    fesetround(FE_TONEAREST);
    /* Exception flags (fetestexcept) are compared by fpu_flags.c. */
    return 0;
}
