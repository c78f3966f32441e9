/* Makes argv[1] separate (every other) pages of one mapping executable with mprotect;
 * prints how many calls succeeded and the errno of the first that failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100, ok = 0;
    int first_errno = 0;
    char *p = mmap(NULL, (size_t)n * 2 * 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    for (long i = 0; i < n; i++) {
        if (mprotect(p + i * 2 * 4096, 4096, PROT_READ | PROT_EXEC) == 0) ok++;
        else if (!first_errno) first_errno = errno;
    }
    printf("ok=%ld errno=%d\n", ok, first_errno);
    return 0;
}
