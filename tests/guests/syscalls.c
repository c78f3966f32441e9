/* A tight getppid loop for measuring the syscall rate. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000, s = 0;
    for (long i = 0; i < n; i++) s += getppid();
    printf("%ld\n", s);
    return 0;
}
