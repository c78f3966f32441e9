/* Calls argv[1] distinct syscall numbers no kernel has (0x10000 upwards); prints how many
 * returned ENOSYS. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000, enosys = 0;
    for (long i = 0; i < n; i++)
        if (syscall(0x10000 + i) == -1 && errno == ENOSYS) enosys++;
    printf("enosys=%ld\n", enosys);
    return 0;
}
