/* Store-heavy compute loop for tools/ucbench: sieve + array sums, no libc. */
#define N (4u << 20)
#ifndef ROUNDS
#define ROUNDS 24
#endif
static unsigned char composite[N];
static unsigned int sums[1 << 16];

static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

void _start(void) {
    unsigned long count = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (volatile unsigned char *p = composite; p < composite + N; p++) *p = 0;
        for (unsigned i = 2; i < N; i++) {
            if (composite[i]) continue;
            count++;
            for (unsigned long j = (unsigned long)i * i; j < N; j += i) composite[j] = 1;
        }
        for (unsigned i = 0; i < N; i++) sums[i & 0xffff] += composite[i] + i;
    }
    char buf[24];
    int k = 23;
    buf[k] = '\n';
    unsigned long v = count + sums[7];
    do { buf[--k] = (char)('0' + v % 10); v /= 10; } while (v);
    sys3(1, 1, (long)(buf + k), 24 - k);
    sys3(231, 0, 0, 0);
    for (;;) {}
}
