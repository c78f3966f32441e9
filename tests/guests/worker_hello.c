/* Worker test guest: greets on stdout and stderr, exits with code 3. */
#include <stdio.h>

int main(int argc, char **argv) {
    printf("hello from %s\n", argc > 1 ? argv[1] : "worker");
    fflush(stdout);
    fprintf(stderr, "to stderr\n");
    return 3;
}
