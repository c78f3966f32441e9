/* Argument limits of the file syscalls: F_DUPFD bounds, path and name lengths, bad pointers. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int bad;

static void expect(const char *what, long got, int want_errno) {
    int ok = want_errno ? (got == -1 && errno == want_errno) : got >= 0;
    printf("%s: %s (got %ld, errno %d)\n", what, ok ? "ok" : "FAIL", got, errno);
    bad += !ok;
    errno = 0;
}

static char *filled(size_t len, char c) {
    char *p = malloc(len + 1);
    memset(p, c, len);
    p[len] = 0;
    return p;
}

int main(void) {
    struct stat st;
    char buf[64];
    expect("dupfd -10", fcntl(1, F_DUPFD, -10), EINVAL);
    expect("dupfd_cloexec -1", fcntl(1, F_DUPFD_CLOEXEC, -1), EINVAL);
    expect("dupfd past the table", fcntl(1, F_DUPFD, 1 << 20), EINVAL);
    long fd = fcntl(1, F_DUPFD, 10);
    expect("dupfd 10", fd >= 10 ? fd : -1, 0);

    char *huge = filled(10 * 1024, 'a');            /* 10 KB, no slash */
    huge[0] = '/';
    expect("open 10 KB path", open(huge, O_RDONLY), ENAMETOOLONG);
    expect("stat 10 KB path", stat(huge, &st), ENAMETOOLONG);
    expect("mkdir 10 KB path", mkdir(huge, 0755), ENAMETOOLONG);
    expect("symlink 10 KB target", symlink(huge, "/tmp-link"), ENAMETOOLONG);
    char *max = filled(4096, '/');                  /* 4096 bytes before the NUL: too long */
    expect("4096-byte path", access(max, F_OK), ENAMETOOLONG);
    max[4095] = 0;                                  /* 4095 slashes: the root */
    expect("4095-byte path", access(max, F_OK), 0);

    char *name = filled(256, 'n');
    char path[300];
    snprintf(path, sizeof path, "/%s", name);
    expect("256-byte name", open(path, O_CREAT | O_WRONLY, 0644), ENAMETOOLONG);
    snprintf(path, sizeof path, "/%s/x", name);
    expect("256-byte directory", stat(path, &st), ENAMETOOLONG);
    name[255] = 0;
    snprintf(path, sizeof path, "/%s", name);
    long made = open(path, O_CREAT | O_WRONLY, 0644);
    expect("255-byte name", made, 0);
    if (made >= 0) close(made);
    expect("255-byte name unlinks", unlink(path), 0);

    expect("bad pointer", open((const char *)8, O_RDONLY), EFAULT);
    expect("empty path", open("", O_RDONLY), ENOENT);
    printf("failures=%d\n", bad);
    return bad;
}
