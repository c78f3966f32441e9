/* Two threads copy 1 MiB through a pipe (blocking both ways); prints a checksum.
   argv[1] (optional): total bytes. A reader blocks on an empty pipe, a writer past 64 KiB.
   argv[2] "gate": halfway the reader prints "half" and reads a byte of stdin first (a test
   saves the machine then, with the writer parked on the full pipe). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

static int fds[2];
static long total = 1 << 20;

static void *writer(void *arg) {
    (void)arg;
    unsigned char buf[10000];
    long sent = 0;
    while (sent < total) {
        long n = total - sent < (long)sizeof buf ? total - sent : (long)sizeof buf;
        for (long i = 0; i < n; i++) buf[i] = (unsigned char)((sent + i) * 7 + 3);
        long off = 0;
        while (off < n) {
            ssize_t w = write(fds[1], buf + off, n - off);
            if (w <= 0) { perror("write"); exit(3); }
            off += w;
        }
        sent += n;
    }
    close(fds[1]);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) total = atol(argv[1]);
    if (pipe(fds)) return 1;
    pthread_t th;
    pthread_create(&th, NULL, writer, NULL);
    unsigned long sum = 0, got = 0;
    unsigned char buf[8192];
    int gate = argc > 2 && !strcmp(argv[2], "gate");
    for (;;) {
        if (gate && got >= (unsigned long)total / 2) {
            char c;
            printf("half\n");
            fflush(stdout);
            if (read(0, &c, 1) != 1) return 6;
            gate = 0;
        }
        ssize_t r = read(fds[0], buf, sizeof buf);
        if (r < 0) { perror("read"); return 2; }
        if (r == 0) break;
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] != (unsigned char)((got + i) * 7 + 3)) { printf("mismatch at %lu\n", got + i); return 4; }
            sum = sum * 31 + buf[i];
        }
        got += r;
    }
    pthread_join(th, NULL);
    printf("got %lu sum %lu\n", got, sum);
    return 0;
}
