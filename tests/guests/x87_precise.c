/* Runs the x87 transcendental, remainder and scaling instructions on a few operands and
 * prints the bit patterns of everything they leave on the stack and the whole status word
 * (condition codes C0-C3, TOP, exception flags). Compared line by line with the same
 * binary run natively (tests/unit/runtime/test_x87_precise.py).
 *
 * Each run starts from an environment loaded with fldenv: a control word (precision and
 * rounding control vary, exceptions masked), condition codes preset to all-zero or all-one
 * (instructions leave some of them undefined: whatever the hardware does, the emulator
 * must do too), an empty stack. It then loads ST1 and ST0, executes the instruction and
 * stores the state with fnsave, which also empties the stack again. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct env28 {
    uint32_t cw, sw, tw, ip, cs, dp, ds;
};

struct save108 {
    struct env28 env;
    unsigned char st[8][10];
};

typedef void (*runner)(const struct env28 *, const long double *, const long double *,
                       struct save108 *);

#define OP(name, insn)                                                                  \
    static void run_##name(const struct env28 *e, const long double *a,                 \
                           const long double *b, struct save108 *out) {                 \
        __asm__ volatile("fldenv %1\n\t"                                                \
                         "fldt %3\n\t"                                                  \
                         "fldt %2\n\t" insn "\n\t"                                      \
                         "fnsave %0"                                                    \
                         : "=m"(*out)                                                   \
                         : "m"(*e), "m"(*a), "m"(*b)                                    \
                         : "memory");                                                   \
    }

OP(f2xm1, "f2xm1")
OP(fyl2x, "fyl2x")
OP(fyl2xp1, "fyl2xp1")
OP(fptan, "fptan")
OP(fpatan, "fpatan")
OP(fsin, "fsin")
OP(fcos, "fcos")
OP(fsincos, "fsincos")
OP(fscale, "fscale")
OP(fprem, "fprem")
OP(fprem1, "fprem1")
OP(fxtract, "fxtract")
OP(frndint, "frndint")

static long double bits(uint16_t se, uint64_t m) {
    long double v = 0;
    memcpy(&v, &m, 8);
    memcpy((char *)&v + 8, &se, 2);
    return v;
}

static void show(const char *label, const void *p) {
    uint64_t m;
    uint16_t se;
    memcpy(&m, p, 8);
    memcpy(&se, (const char *)p + 8, 2);
    printf(" %s=%04x:%016llx", label, se, (unsigned long long)m);
}

#define MAXV 16

struct op {
    const char *name;
    runner run;
    int binary; /* uses ST1 */
    int n;
    long double a[MAXV], b[MAXV]; /* ST0, ST1 before the instruction */
};

static const uint16_t control_words[] = {
    0x037f, /* Linux's default: 64-bit precision, round to nearest */
    0x027f, /* 53-bit precision */
    0x007f, /* 24-bit precision */
    0x0f7f, /* round toward zero */
    0x0b7f, /* round up */
};

int main(void) {
    const long double inf = __builtin_infl(), nan = __builtin_nanl("");
    const long double denormal = bits(0x0000, 0x0000000012345678ull);
    const long double unnormal = bits(0x3fff, 0x4000000000000000ull);
    const long double pi = 3.14159265358979323846264338327950288L;
    static struct op ops[13];
    int k = 0;
    ops[k++] = (struct op){"f2xm1", run_f2xm1, 0, 10,
        {0.5L, -0.5L, 0.3L, -0.999L, 1e-10L, 1.0L, -1.0L, -0.0L, denormal, 0.7071067811865475244L},
        {0}};
    ops[k++] = (struct op){"fyl2x", run_fyl2x, 1, 10,
        {7.0L, 0.1L, 2.0L, 1e4000L, 1.0L, -1.0L, 0.0L, inf, denormal, 0.999999999L},
        {1.0L, 3.0L, -0.5L, 1.0L, 5.0L, 1.0L, 1.0L, 2.0L, 1.0L, 0.6931471805599453094L}};
    ops[k++] = (struct op){"fyl2xp1", run_fyl2xp1, 1, 8,
        {0.25L, -0.25L, 1e-12L, 0.2928932188134524756L, -0.0L, denormal, 0.1L, -0.29L},
        {1.0L, 1.0L, 3.0L, 1.0L, 2.0L, 1.0L, 0.6931471805599453094L, -7.0L}};
    ops[k++] = (struct op){"fptan", run_fptan, 0, 10,
        {0.5L, 1.0L, -1.5L, pi / 4, 1e10L, 1e19L, -0.0L, inf, nan, denormal}, {0}};
    ops[k++] = (struct op){"fpatan", run_fpatan, 1, 10,
        {3.0L, -5.0L, 1.0L, -0.0L, 0.0L, inf, 1e-3000L, 1e3000L, 2.0L, -1.0L},
        {1.0L, -2.0L, 1.0L, 0.0L, -0.0L, inf, 1.0L, 1e-3000L, denormal, 1e-20L}};
    ops[k++] = (struct op){"fsin", run_fsin, 0, 12,
        {1.0L, 0.5L, -2.0L, pi, 1e10L, 1e19L, -1e19L, -0.0L, inf, denormal, unnormal, 1e-6L},
        {0}};
    ops[k++] = (struct op){"fcos", run_fcos, 0, 10,
        {1.0L, 0.5L, -2.0L, pi / 2, 1e10L, 1e19L, -0.0L, inf, nan, 1e-6L}, {0}};
    ops[k++] = (struct op){"fsincos", run_fsincos, 0, 9,
        {1.0L, 0.5L, -2.0L, pi, 1e15L, 1e19L, 0.0L, inf, 3e-5L}, {0}};
    ops[k++] = (struct op){"fscale", run_fscale, 1, 10,
        {1.5L, 1.0L, 1.0L, 3.0L, 0.1L, 1.0L, 7.0L, 0.0L, denormal, 1.2345678901234567891L},
        {10.0L, -16440.0L, 20000.0L, inf, -2.5L, -inf, 0.9L, inf, 3.0L, -16400.0L}};
    ops[k++] = (struct op){"fprem", run_fprem, 1, 9,
        {7.5L, -7.5L, 1e30L, 1e4000L, 0.1L, 5.0L, inf, 3.0L, 1.0000000000000000001L},
        {2.0L, 2.0L, 3.1L, 0.7L, 1e-5L, 0.0L, 1.0L, inf, 0.1L}};
    ops[k++] = (struct op){"fprem1", run_fprem1, 1, 9,
        {7.5L, -7.5L, 1e30L, 1e4000L, 0.1L, 5.0L, inf, 3.0L, 1.0000000000000000001L},
        {2.0L, 2.0L, 3.1L, 0.7L, 1e-5L, 0.0L, 1.0L, inf, 0.1L}};
    ops[k++] = (struct op){"fxtract", run_fxtract, 0, 7,
        {12.0L, -0.1L, denormal, 0.0L, -inf, nan, 1e4000L}, {0}};
    ops[k++] = (struct op){"frndint", run_frndint, 0, 8,
        {2.5L, -3.5L, 0.4999L, 1e-3L, 1e19L, -0.0L, 123456789.5L, 0.1L}, {0}};

    for (int i = 0; i < k; i++) {
        for (unsigned c = 0; c < sizeof control_words / sizeof control_words[0]; c++) {
            for (uint32_t preset = 0; preset <= 0x4700; preset += 0x4700) {
                for (int v = 0; v < ops[i].n; v++) {
                    struct env28 e = {control_words[c], preset, 0xffff, 0, 0, 0, 0};
                    struct save108 s;
                    /* a unary instruction leaves ST1 alone: 1.0 there */
                    long double a = ops[i].a[v], b = ops[i].binary ? ops[i].b[v] : 1.0L;
                    memset(&s, 0, sizeof s);
                    ops[i].run(&e, &a, &b, &s);
                    unsigned sw = s.env.sw & 0xffff, top = (sw >> 11) & 7;
                    int depth = (8 - top) & 7;
                    printf("%-7s cw=%04x cc=%04x", ops[i].name, control_words[c], preset);
                    show("a", &a);
                    show("b", &b);
                    printf(" sw=%04x", sw);
                    for (int d = 0; d < depth && d < 3; d++) {
                        char label[4] = {'s', 't', (char)('0' + d), 0};
                        show(label, s.st[d]);
                    }
                    printf("\n");
                }
            }
        }
    }
    return 0;
}
