/* File modes, owners, times, links, renameat2, fallocate, shared file mappings. */
#include "common.h"
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

static void mode_of(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) { printf("%s: %s\n", path, ename(errno)); return; }
    printf("%s: mode %o\n", path, st.st_mode);
}

static int t_chmod(int argc, char **argv) {
    int fd = open("/tmp/f", O_CREAT | O_WRONLY, 0644);
    mode_of("/tmp/f");
    printf("chmod: %d\n", chmod("/tmp/f", 0640));
    mode_of("/tmp/f");
    printf("fchmod: %d\n", fchmod(fd, 04711));
    mode_of("/tmp/f");
    printf("fchmodat: %d\n", fchmodat(AT_FDCWD, "/tmp/f", 0600, 0));
    mode_of("/tmp/f");
    mkdir("/tmp/d", 0755);
    chmod("/tmp/d", 01777);
    mode_of("/tmp/d");
    CALL("chmod missing", chmod("/tmp/nope", 0600));
    return 0;
}

static int t_umask(int argc, char **argv) {
    printf("initial umask %03o\n", umask(027));
    close(open("/tmp/f", O_CREAT | O_WRONLY, 0666));
    mode_of("/tmp/f");
    mkdir("/tmp/d", 0777);
    mode_of("/tmp/d");
    printf("umask now %03o\n", umask(0));
    close(open("/tmp/g", O_CREAT | O_WRONLY, 0666));
    mode_of("/tmp/g");
    return 0;
}

static void owner_of(const char *path, int follow) {
    struct stat st;
    (follow ? stat : lstat)(path, &st);
    printf("%s: uid %d gid %d\n", path, (int)st.st_uid, (int)st.st_gid);
}

static int t_chown(int argc, char **argv) {
    printf("ids %d %d\n", (int)getuid(), (int)getgid());
    int fd = open("/tmp/f", O_CREAT | O_WRONLY, 0644);
    owner_of("/tmp/f", 1);
    printf("chown: %d\n", chown("/tmp/f", 1000, 1001));
    owner_of("/tmp/f", 1);
    printf("fchown: %d\n", fchown(fd, 2000, -1));
    owner_of("/tmp/f", 1);
    symlink("/tmp/f", "/tmp/l");
    printf("lchown: %d\n", lchown("/tmp/l", 3000, 3000));
    owner_of("/tmp/l", 0);
    owner_of("/tmp/f", 1);
    return 0;
}

static void times_of(const char *path) {
    struct stat st;
    stat(path, &st);
    printf("%s: atime %lld.%09ld mtime %lld.%09ld\n", path, (long long)st.st_atim.tv_sec,
           st.st_atim.tv_nsec, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
}

static int t_utimensat(int argc, char **argv) {
    int fd = open("/tmp/f", O_CREAT | O_WRONLY, 0644);
    struct timespec ts[2] = {{1000000000, 123456789}, {1200000000, 5}};
    printf("utimensat: %d\n", utimensat(AT_FDCWD, "/tmp/f", ts, 0));
    times_of("/tmp/f");
    struct timespec omit[2] = {{0, UTIME_OMIT}, {1300000000, 0}};
    printf("omit atime: %d\n", utimensat(AT_FDCWD, "/tmp/f", omit, 0));
    times_of("/tmp/f");
    struct timespec fts[2] = {{7, 0}, {8, 0}};
    printf("futimens: %d\n", futimens(fd, fts));
    times_of("/tmp/f");
    struct timespec bad[2] = {{0, 2000000000}, {0, 0}};
    CALL("bad nsec", utimensat(AT_FDCWD, "/tmp/f", bad, 0));
    printf("now: %d\n", utimensat(AT_FDCWD, "/tmp/f", NULL, 0));
    struct stat st;
    stat("/tmp/f", &st);
    printf("recent: %d\n", st.st_mtim.tv_sec > 1600000000);
    return 0;
}

static int t_link(int argc, char **argv) {
    int fd = open("/tmp/a", O_CREAT | O_WRONLY, 0644);
    write(fd, "data", 4);
    close(fd);
    printf("link: %d\n", link("/tmp/a", "/tmp/b"));
    struct stat a, b;
    stat("/tmp/a", &a);
    stat("/tmp/b", &b);
    printf("nlink %d %d same inode %d\n", (int)a.st_nlink, (int)b.st_nlink, a.st_ino == b.st_ino);
    CALL("link exists", link("/tmp/a", "/tmp/b"));
    symlink("a", "/tmp/s");
    int dir = open("/tmp", O_RDONLY | O_DIRECTORY);
    printf("linkat follow: %d\n", linkat(dir, "s", dir, "c", AT_SYMLINK_FOLLOW));
    struct stat c;
    lstat("/tmp/c", &c);
    printf("c regular %d nlink %d\n", S_ISREG(c.st_mode), (int)c.st_nlink);
    printf("linkat nofollow: %d\n", linkat(dir, "s", dir, "d", 0));
    lstat("/tmp/d", &c);
    printf("d symlink %d\n", S_ISLNK(c.st_mode));
    unlink("/tmp/a");
    stat("/tmp/b", &b);
    printf("after unlink nlink %d\n", (int)b.st_nlink);
    return 0;
}

static int t_symlinkat(int argc, char **argv) {
    mkdir("/tmp/dir", 0755);
    int dir = open("/tmp/dir", O_RDONLY | O_DIRECTORY);
    printf("symlinkat: %d\n", symlinkat("target", dir, "lnk"));
    char buf[64] = {0};
    ssize_t n = readlinkat(dir, "lnk", buf, sizeof buf);
    printf("readlinkat %zd '%s'\n", n, buf);
    struct stat st;
    fstatat(dir, "lnk", &st, AT_SYMLINK_NOFOLLOW);
    printf("lnk: symlink %d size %lld\n", S_ISLNK(st.st_mode), (long long)st.st_size);
    CALL("dangling stat", fstatat(dir, "lnk", &st, 0));
    close(open("/tmp/dir/target", O_CREAT | O_WRONLY, 0600));
    printf("now resolves: %d\n", fstatat(dir, "lnk", &st, 0));
    CALL("exists", symlinkat("x", dir, "lnk"));
    memset(buf, 0, sizeof buf);
    printf("short readlink %zd '%s'\n", readlinkat(dir, "lnk", buf, 3), buf);
    return 0;
}

static void put(const char *path, const char *s) {
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    write(fd, s, strlen(s));
    close(fd);
}

static void show(const char *path) {
    char buf[32] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("%s: %s\n", path, ename(errno)); return; }
    read(fd, buf, sizeof buf - 1);
    close(fd);
    printf("%s: %s\n", path, buf);
}

static int t_renameat2(int argc, char **argv) {
    put("/tmp/x", "X");
    put("/tmp/y", "Y");
    long r = syscall(SYS_renameat2, AT_FDCWD, "/tmp/x", AT_FDCWD, "/tmp/y", RENAME_NOREPLACE);
    printf("noreplace onto existing: %ld %s\n", r, ename(errno));
    r = syscall(SYS_renameat2, AT_FDCWD, "/tmp/x", AT_FDCWD, "/tmp/y", RENAME_EXCHANGE);
    printf("exchange: %ld\n", r);
    show("/tmp/x");
    show("/tmp/y");
    r = syscall(SYS_renameat2, AT_FDCWD, "/tmp/x", AT_FDCWD, "/tmp/z", RENAME_NOREPLACE);
    printf("noreplace onto new: %ld\n", r);
    show("/tmp/x");
    show("/tmp/z");
    r = syscall(SYS_renameat2, AT_FDCWD, "/tmp/z", AT_FDCWD, "/tmp/none", RENAME_EXCHANGE);
    printf("exchange with missing: %ld %s\n", r, ename(errno));
    r = syscall(SYS_renameat2, AT_FDCWD, "/tmp/z", AT_FDCWD, "/tmp/y",
                RENAME_EXCHANGE | RENAME_NOREPLACE);
    printf("both flags: %ld %s\n", r, ename(errno));
    return 0;
}

static int t_fallocate(int argc, char **argv) {
    int fd = open("/tmp/f", O_CREAT | O_RDWR, 0644);
    printf("fallocate: %d\n", fallocate(fd, 0, 0, 1 << 20));
    struct stat st;
    fstat(fd, &st);
    printf("size %lld blocks >= 2048: %d\n", (long long)st.st_size, st.st_blocks >= 2048);
    printf("keep size: %d\n", fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20));
    fstat(fd, &st);
    printf("size %lld\n", (long long)st.st_size);
    pwrite(fd, "abcdefgh", 8, 4096);
    int r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 4096);
    char buf[8];
    pread(fd, buf, 8, 4096);
    printf("punch hole: %d zeros %d\n", r, memcmp(buf, "\0\0\0\0\0\0\0\0", 8) == 0);
    CALL("bad mode", fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 10));
    printf("posix_fallocate: %d\n", posix_fallocate(fd, 0, 3 << 20));
    fstat(fd, &st);
    printf("size %lld\n", (long long)st.st_size);
    return 0;
}

static int t_mmap_shared(int argc, char **argv) {
    int fd = open("/tmp/f", O_CREAT | O_RDWR, 0644);
    ftruncate(fd, 8192);
    char *a = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *b = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    printf("mapped twice: %d\n", a != MAP_FAILED && b != MAP_FAILED && a != b);
    memcpy(a + 4096, "via mapping a", 13);
    char buf[16] = {0};
    pread(fd, buf, 13, 4096);
    printf("read(): %s\n", buf);
    printf("mapping b: %.13s\n", b + 4096);
    pwrite(fd, "via write()", 11, 100);
    printf("mapping a after write(): %.11s\n", a + 100);
    char *priv = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    memcpy(priv, "private", 7);
    pread(fd, buf, 7, 0);
    printf("private write reaches file: %d\n", memcmp(buf, "private", 7) == 0);
    munmap(a, 8192);
    printf("b still sees it: %.13s\n", b + 4096);
    return 0;
}

static int t_msync(int argc, char **argv) {
    int fd = open("/tmp/f", O_CREAT | O_RDWR, 0644);
    ftruncate(fd, 4096);
    char *a = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    strcpy(a, "synced line\n");
    printf("msync: %d\n", msync(a, 4096, MS_SYNC));
    CALL("msync unaligned", msync(a + 1, 10, MS_SYNC));
    munmap(a, 4096);
    close(fd);
    show("/tmp/f");
    return 0;
}

static struct subtest tests[] = {
    {"chmod", t_chmod}, {"umask", t_umask}, {"chown", t_chown}, {"utimensat", t_utimensat},
    {"link", t_link}, {"symlinkat", t_symlinkat}, {"renameat2", t_renameat2},
    {"fallocate", t_fallocate}, {"mmap_shared", t_mmap_shared}, {"msync", t_msync},
};
RUN_SUBTESTS(tests)
