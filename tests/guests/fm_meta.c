/* File metadata, links, renameat2 and fallocate, each step printed as "name: values".
 * The directory argv[1] is created first (a writable place). Built -static for x86_64 and
 * -m32. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>
#include <utime.h>

static void show(const char *what, const char *path, int follow) {
    struct stat st;
    int rc = follow ? stat(path, &st) : lstat(path, &st);
    if (rc != 0) { printf("%s: errno=%d\n", what, errno); return; }
    printf("%s: mode=%o uid=%u gid=%u nlink=%lu size=%lld\n", what,
           (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, (unsigned)st.st_gid,
           (unsigned long)st.st_nlink, (long long)st.st_size);
}

#define TRY(label, expr) do { errno = 0; long rc_ = (long)(expr); int e_ = errno; \
    printf("%s: %ld errno=%d\n", label, rc_, rc_ < 0 ? e_ : 0); } while (0)

static int rename2(const char *a, const char *b, unsigned flags) {
    return syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, flags);
}

int main(int argc, char **argv) {
    const char *d = argc > 1 ? argv[1] : "/w";
    char p[256], q[256];
    mkdir(d, 0777);
    if (chdir(d) != 0) { printf("chdir errno=%d\n", errno); return 1; }
    printf("umask: %o\n", (unsigned)umask(027));
    int fd = open("f", O_CREAT | O_RDWR, 0777);
    write(fd, "hello", 5);
    show("created", "f", 1);
    mkdir("dir", 0777);
    show("mkdir", "dir", 1);
    umask(0);
    printf("chmod: %d\n", chmod("f", 04755));
    show("after chmod", "f", 1);
    struct stat fst;
    fstat(fd, &fst);
    printf("fstat: mode=%o\n", (unsigned)(fst.st_mode & 07777));
    printf("fchmod: %d\n", fchmod(fd, 0600));
    show("after fchmod", "f", 1);
    printf("chown: %d\n", chown("f", 1000, 2000));
    show("after chown", "f", 1);
    printf("fchown: %d\n", fchown(fd, -1, 3000));
    show("after fchown", "f", 1);
    chmod("f", 06755);
    printf("chown again: %d\n", chown("f", 5, -1));
    show("suid dropped", "f", 1);
    symlink("f", "lnk");
    printf("lchown: %d\n", lchown("lnk", 7, 8));
    show("lnk", "lnk", 0);
    show("lnk target", "lnk", 1);
    struct timespec ts[2] = {{1000000000, 5}, {1200000000, 0}};
    printf("utimensat: %d\n", utimensat(AT_FDCWD, "f", ts, 0));
    struct stat st;
    stat("f", &st);
    printf("times: %ld %ld %ld\n", (long)st.st_atime, (long)st.st_atim.tv_nsec, (long)st.st_mtime);
    struct timespec omit[2] = {{0, UTIME_OMIT}, {1300000000, 0}};
    utimensat(AT_FDCWD, "f", omit, 0);
    stat("f", &st);
    printf("omit: %ld %ld\n", (long)st.st_atime, (long)st.st_mtime);
    struct timeval tv[2] = {{1400000000, 0}, {1500000000, 0}};
    printf("utimes: %d\n", utimes("f", tv));
    stat("f", &st);
    printf("utimes times: %ld %ld\n", (long)st.st_atime, (long)st.st_mtime);
    struct utimbuf ub = {1600000000, 1700000000};
    printf("utime: %d\n", utime("f", &ub));
    stat("f", &st);
    printf("utime times: %ld %ld\n", (long)st.st_atime, (long)st.st_mtime);
    struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
    futimens(fd, now);
    stat("f", &st);
    printf("now recent: %d\n", st.st_mtime > 1700000000);
    /* links */
    printf("link: %d\n", link("f", "hard"));
    show("nlink", "f", 1);
    TRY("link exists", link("f", "hard"));
    TRY("link dir", link("dir", "dirlink"));
    printf("linkat follow: %d\n", linkat(AT_FDCWD, "lnk", AT_FDCWD, "hard2", AT_SYMLINK_FOLLOW));
    show("hard2", "hard2", 0);
    printf("linkat nofollow: %d\n", linkat(AT_FDCWD, "lnk", AT_FDCWD, "lnk2", 0));
    show("lnk2", "lnk2", 0);
    printf("linkat empty: %d\n", linkat(fd, "", AT_FDCWD, "hard3", AT_EMPTY_PATH));
    show("nlink4", "f", 1);
    printf("symlinkat: %d\n", symlinkat("/etc/../f-target", AT_FDCWD, "sl"));
    char buf[64] = {0};
    readlink("sl", buf, sizeof buf - 1);
    printf("readlink: %s\n", buf);
    /* renameat2 */
    int a = open("a", O_CREAT | O_WRONLY, 0644); write(a, "AAA", 3); close(a);
    int b = open("b", O_CREAT | O_WRONLY, 0644); write(b, "B", 1); close(b);
    TRY("noreplace", rename2("a", "b", 1));
    printf("exchange: %d\n", rename2("a", "b", 2));
    show("a", "a", 1);
    show("b", "b", 1);
    TRY("exchange missing", rename2("a", "nope", 2));
    TRY("whiteout", rename2("a", "c", 4));
    TRY("both flags", rename2("a", "c", 3));
    printf("noreplace new: %d\n", rename2("a", "c", 1));
    mkdir("d1", 0755); mkdir("d1/sub", 0755);
    printf("exchange dir/file: %d\n", rename2("d1", "c", 2));
    show("c is dir", "c/sub", 1);
    TRY("exchange into self", rename2("c", "c/sub", 2));
    /* fallocate */
    int g = open("g", O_CREAT | O_RDWR, 0644);
    printf("fallocate: %d\n", fallocate(g, 0, 0, 100000));
    fstat(g, &st);
    printf("size: %lld\n", (long long)st.st_size);
    printf("fallocate blocks: %d\n", st.st_blocks >= 100000 / 512);
    printf("keep size: %d\n", fallocate(g, FALLOC_FL_KEEP_SIZE, 0, 500000));
    fstat(g, &st);
    printf("size: %lld\n", (long long)st.st_size);
    pwrite(g, "xxxxxxxx", 8, 4096);
    printf("punch: %d\n", fallocate(g, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 4));
    char r[8];
    pread(g, r, 8, 4096);
    printf("punched: %d %d %c\n", r[0], r[3], r[4]);
    TRY("bad mode", fallocate(g, 0x40, 0, 1));
    TRY("bad len", fallocate(g, 0, 0, 0));
    int ro = open("g", O_RDONLY);
    TRY("read-only", fallocate(ro, 0, 0, 1));
    TRY("enospc", fallocate(g, 0, 0, 0x7fffffff));
    /* a lower file: chmod copies it up */
    if (argc > 2) {
        show("lower before", argv[2], 1);
        printf("lower chmod: %d\n", chmod(argv[2], 0400));
        show("lower after", argv[2], 1);
        printf("lower chown: %d\n", chown(argv[2], 42, 43));
        show("lower owner", argv[2], 1);
    }
    return 0;
}
