/* mmap()s a file and reports on it.
 *   mapfile PATH LENGTH OFFSET PAGE...  maps LENGTH bytes of PATH at OFFSET, prints the
 *       mapping's address, then for each PAGE (index into the mapping) its first byte;
 *       "wait" as a PAGE blocks on stdin first (a save/restore can happen there);
 *       "write" as a PAGE writes 0xee over page 0 (the file must not change).
 * Prints "mmap errno=N" and exits 0 when the mmap fails. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { printf("open errno=%d\n", errno); return 1; }
    size_t length = strtoul(argv[2], NULL, 0);
    off_t offset = strtoull(argv[3], NULL, 0);
    unsigned char *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, offset);
    if (p == MAP_FAILED) { printf("mmap errno=%d\n", errno); return 0; }
    close(fd);
    printf("mapped at 0x%lx\n", (unsigned long)p);
    fflush(stdout);
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "wait") == 0) {
            printf("waiting\n");
            fflush(stdout);
            char c;
            if (read(0, &c, 1) < 0) return 3;
            continue;
        }
        if (strcmp(argv[i], "write") == 0) {
            memset(p, 0xee, 4096);
            continue;
        }
        long page = atol(argv[i]);
        printf("page %ld: %d\n", page, p[page * 4096]);
        fflush(stdout);
    }
    return 0;
}
