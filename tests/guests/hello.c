/* Prints its arguments and one environment variable, then exits with argv[1]'s number. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char exe[256];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n < 0 ? 0 : n] = 0;
    printf("argc=%d exe=%s\n", argc, exe);
    for (int i = 1; i < argc; i++) printf("arg%d=%s\n", i, argv[i]);
    const char *greet = getenv("GREETING");
    printf("GREETING=%s\n", greet ? greet : "(unset)");
    fprintf(stderr, "to-stderr\n");
    return argc > 1 ? atoi(argv[1]) : 0;
}
