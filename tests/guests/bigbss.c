/* A program with a 1.7 GiB bss: touches one byte per MiB of it, then exits 0. */
#include <stdio.h>

#define BSS_BYTES (1700UL << 20)
char big[BSS_BYTES];

int main(void) {
    volatile char *p = big;
    unsigned long sum = 0;
    for (unsigned long i = 0; i < BSS_BYTES; i += 1UL << 20) {
        p[i] = 1;
        sum += (unsigned char)p[i];
    }
    printf("touched %lu MiB of bss\n", sum);
    return 0;
}
