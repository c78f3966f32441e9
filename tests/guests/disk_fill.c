/* Fills the writable layer until ENOSPC: short write, then ENOSPC; growth by ftruncate, pwrite
 * or copy-up refused; an unlinked file's space comes back when its last descriptor closes.
 * usage: disk_fill LOWER_FILE (a file of the image, larger than the space left at the end) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int bad;

static void check(const char *what, int ok) {
    printf("%s: %s (errno %d)\n", what, ok ? "ok" : "FAIL", errno);
    bad += !ok;
    errno = 0;
}

int main(int argc, char **argv) {
    static char buf[65536];
    memset(buf, 'x', sizeof buf);
    int fd = open("/big", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    check("create", fd >= 0);
    long total = 0, shorts = 0;
    ssize_t n;
    int err = 0;
    for (;;) {
        n = write(fd, buf, sizeof buf);
        if (n < 0) { err = errno; break; }
        if (n < (ssize_t)sizeof buf) shorts++;
        total += n;
        if (total > (1L << 30)) break;              /* no quota at all: stop */
    }
    printf("written=%ld shorts=%ld\n", total, shorts);
    errno = err;
    check("write ends with ENOSPC", n < 0 && err == ENOSPC);
    check("one short write before it", shorts == 1);
    check("ftruncate cannot grow", ftruncate(fd, total + 4096) < 0 && errno == ENOSPC);
    check("pwrite past the end refused", pwrite(fd, buf, 10, total + 100000) < 0 &&
          errno == ENOSPC);
    check("overwrite inside the file works", pwrite(fd, buf, 100, 0) == 100);
    check("copy-up refused", open(argv[1], O_WRONLY) < 0 && errno == ENOSPC);
    check("unlink while open", unlink("/big") == 0);
    check("space still held by the open file", open(argv[1], O_RDWR) < 0 && errno == ENOSPC);
    close(fd);
    int up = open(argv[1], O_RDWR);
    check("copy-up fits once the last fd closed", up >= 0);
    close(up);
    fd = open("/again", O_CREAT | O_WRONLY, 0644);
    check("space is back", fd >= 0 && write(fd, buf, sizeof buf) == sizeof buf);
    printf("failures=%d\n", bad);
    return bad;
}
