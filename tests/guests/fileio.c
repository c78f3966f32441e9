/* File I/O inside the sandbox: create, read back, rename, unlink, list; then try to escape. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int check(const char *what, int ok) {
    printf("%s: %s\n", what, ok ? "ok" : "FAIL");
    return ok ? 0 : 1;
}

int main(void) {
    int bad = 0;
    char buf[256];
    mkdir("/work", 0755);
    int fd = open("/work/a.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    bad += check("create", fd >= 0 && write(fd, "hello file\n", 11) == 11);
    close(fd);
    fd = open("/work/a.txt", O_RDONLY);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n < 0 ? 0 : n] = 0;
    bad += check("read back", strcmp(buf, "hello file\n") == 0);
    struct stat st;
    bad += check("fstat size", fstat(fd, &st) == 0 && st.st_size == 11);
    bad += check("lseek", lseek(fd, 6, SEEK_SET) == 6 && read(fd, buf, 4) == 4 &&
                 memcmp(buf, "file", 4) == 0);
    close(fd);
    bad += check("rename", rename("/work/a.txt", "/work/b.txt") == 0 &&
                 access("/work/a.txt", F_OK) != 0 && access("/work/b.txt", F_OK) == 0);
    /* the lower layer's data file is readable, and can be modified through copy-up */
    fd = open("/data/input.txt", O_RDWR | O_APPEND);
    bad += check("copy-up append", fd >= 0 && write(fd, "more\n", 5) == 5);
    close(fd);
    bad += check("unlink lower", unlink("/data/remove-me.txt") == 0 &&
                 access("/data/remove-me.txt", F_OK) != 0 && errno == ENOENT);
    int entries = 0;
    DIR *d = opendir("/work");
    struct dirent *e;
    while (d && (e = readdir(d))) entries += e->d_name[0] != '.';
    if (d) closedir(d);
    bad += check("readdir", entries == 1);
    bad += check("unlink", unlink("/work/b.txt") == 0 && access("/work/b.txt", F_OK) != 0);
    /* escapes: every one of these must stay inside the guest root */
    bad += check("dotdot escape", open("/../../../../../../etc/passwd", O_RDONLY) < 0);
    bad += check("symlink create", symlink("/etc/passwd", "/work/link") == 0);
    fd = open("/work/link", O_RDONLY);
    bad += check("symlink escape", fd < 0 && errno == ENOENT);
    symlink("../../../../../../../../etc", "/work/rel");
    bad += check("relative symlink escape", open("/work/rel/passwd", O_RDONLY) < 0);
    bad += check("proc root escape", open("/proc/self/root/etc/passwd", O_RDONLY) < 0);
    bad += check("cwd", chdir("/work") == 0 && getcwd(buf, sizeof buf) && !strcmp(buf, "/work"));
    bad += check("dev null", (fd = open("/dev/null", O_WRONLY)) >= 0 && write(fd, "x", 1) == 1);
    printf("failures=%d\n", bad);
    return bad;
}
