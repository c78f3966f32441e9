/* Calls a syscall number no kernel has, twice; expects ENOSYS. */
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    long r1 = syscall(999);
    int e1 = errno;
    long r2 = syscall(999);
    printf("r=%ld errno_is_enosys=%d r2=%ld\n", r1, e1 == ENOSYS, r2);
    return 0;
}
