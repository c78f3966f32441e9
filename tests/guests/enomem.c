/* Allocates (and touches) 1 MiB blocks until malloc fails; must fail gracefully. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    long count = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) break;
        memset(p, 1, 4096);
        count++;
        if (count > 100000) break;
    }
    printf("allocated %s\n", count > 0 ? "some" : "none");
    fprintf(stderr, "count=%ld\n", count);
    return 0;
}
