/* Files across a save: writes a file in the upper layer, reads /input.txt half-way, waits
 * (the save happens here), then reads the rest and appends to the upper file. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int waits = argc > 1 ? atoi(argv[1]) : 100;
    int out = open("/data/out.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (out < 0) { perror("open out"); return 1; }
    write(out, "before\n", 7);
    int in = open("/input.txt", O_RDONLY);
    if (in < 0) { perror("open in"); return 1; }
    char buf[8192];
    ssize_t n = read(in, buf, 1000);
    unsigned long h = 0;
    for (ssize_t i = 0; i < n; i++) h = h * 33 + (unsigned char)buf[i];
    printf("ready %zd\n", n);
    fflush(stdout);
    struct timespec ts = {0, 10 * 1000 * 1000};
    for (int i = 0; i < waits; i++) nanosleep(&ts, NULL);
    ssize_t m, rest = 0;
    while ((m = read(in, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < m; i++) h = h * 33 + (unsigned char)buf[i];
        rest += m;
    }
    write(out, "after\n", 6);
    close(out);
    int back = open("/data/out.txt", O_RDONLY);
    n = read(back, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("rest=%zd hash=%lu out=[%s]\n", rest, h, buf);
    return 0;
}
