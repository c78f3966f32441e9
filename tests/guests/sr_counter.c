/* Prints a counter with tiny sleeps (pause/resume test): 0..N-1, then "done". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 200;
    struct timespec ts = {0, 5 * 1000 * 1000};
    for (int i = 0; i < n; i++) {
        printf("%d\n", i);
        fflush(stdout);
        nanosleep(&ts, NULL);
    }
    printf("done\n");
    return 0;
}
