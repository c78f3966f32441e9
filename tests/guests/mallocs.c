/* Many malloc/free/realloc sizes, small to large (mmap-backed); verifies contents. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    enum { N = 2000 };
    static char *p[N];
    static size_t sz[N];
    unsigned seed = 1, sum = 0;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < N; i++) {
            seed = seed * 1103515245 + 12345;
            size_t n = (seed >> 8) % (i % 50 == 0 ? 300000 : 2000) + 1;
            p[i] = realloc(p[i], n);
            if (!p[i]) { printf("alloc failed\n"); return 1; }
            memset(p[i], (int)(i + round) & 0xff, n);
            sz[i] = n;
        }
        for (int i = 0; i < N; i += 2) {
            for (size_t j = 0; j < sz[i]; j += 97) sum += (unsigned char)p[i][j];
            free(p[i]);
            p[i] = NULL;
        }
    }
    printf("malloc sum=%u\n", sum);
    return 0;
}
