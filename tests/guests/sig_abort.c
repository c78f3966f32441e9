/* abort(): SIGABRT's default action (core) ends the process. */
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    printf("before abort\n");
    fflush(stdout);
    abort();
}
