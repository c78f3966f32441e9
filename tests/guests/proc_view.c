/* /proc/self/stat, maps, fd, comm and personality as programs parse them; each check
 * printed as "name: value". argv[1] "exec" is the re-executed child (through argv[2]). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static char text[1 << 16];

static int slurp(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int n = 0, r;
    while ((r = read(fd, text + n, sizeof text - 1 - n)) > 0) n += r;
    text[n] = 0;
    close(fd);
    return n;
}

/* field n (1-based, n >= 3) of a stat line: after the last ')' */
static unsigned long long field(int n) {
    char *p = strrchr(text, ')') + 2;
    for (int i = 3; i < n; i++) p = strchr(p, ' ') + 1;
    return strtoull(p, NULL, 10);
}

static int stat_fields(void) {
    int count = 2;
    for (char *t = strtok(strrchr(text, ')') + 1, " \n"); t; t = strtok(NULL, " \n")) count++;
    return count;
}

static void maps_line(const char *name, void *addr) {
    slurp("/proc/self/maps");
    unsigned long a = (unsigned long)addr;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && a >= lo && a < hi) {
            char perms[8], path[256] = "";
            unsigned long off;
            sscanf(line, "%*s %7s %lx %*s %*s %255s", perms, &off, path);
            printf("%s: %s %lx %s\n", name, perms, off, path);
            return;
        }
    }
    printf("%s: none\n", name);
}

int main(int argc, char **argv, char **envp) {
    if (argc > 1 && strcmp(argv[1], "exec") == 0) {
        slurp("/proc/self/comm");
        printf("exec comm: %s", text);
        printf("exec personality: %#x\n", personality(0xffffffff));
        return 0;
    }
    slurp("/proc/self/stat");
    char copy[sizeof text];
    memcpy(copy, text, sizeof text);
    printf("fields: %d\n", stat_fields());
    memcpy(text, copy, sizeof text);
    unsigned long code = (unsigned long)&main;
    printf("code in start/end_code: %d\n", field(26) <= code && code < field(27));
    printf("startstack below argv: %d\n", field(28) < (unsigned long)argv[0]);
    char *args = (char *)(unsigned long)field(48), *args_end = (char *)(unsigned long)field(49);
    printf("arg_start is argv[0]: %d\n", args == argv[0]);
    printf("args: %d\n", args_end - args == (long)(strlen(argv[0]) + 1));
    printf("env_start is envp[0]: %d\n", envp[0] == NULL || (char *)(unsigned long)field(50) == envp[0]);
    printf("start_brk <= sbrk: %d\n", field(47) <= (unsigned long)sbrk(0) && field(47) > 0);
    printf("exit_code: %llu\n", field(52));

    prctl(PR_SET_NAME, "a (b) c) d");
    slurp("/proc/self/stat");
    char *open_paren = strchr(text, '('), *close_paren = strrchr(text, ')');
    printf("comm in stat: %.*s\n", (int)(close_paren - open_paren + 1), open_paren);
    printf("state after comm: %c\n", close_paren[2]);
    memcpy(copy, text, sizeof text);
    printf("fields with odd comm: %d\n", stat_fields());
    char name[16] = "";
    prctl(PR_GET_NAME, name);
    printf("PR_GET_NAME: %s\n", name);

    /* a file mapping at an offset, then mprotect and munmap */
    int fd = open("/data/blob", O_RDONLY);
    char *map = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, fd, 4096);
    maps_line("file map", map);
    maps_line("file map 2nd page", map + 4096);
    char *anon = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(anon + 4096, 4096, PROT_READ);
    maps_line("anon", anon);
    maps_line("anon protected", anon + 4096);
    munmap(map, 8192);
    maps_line("unmapped", map);
    maps_line("code", (void *)&main);
    int local;
    maps_line("stack", &local);

    /* /proc/self/fd lists the directory's own descriptor */
    DIR *dir = opendir("/proc/self/fd");
    int own = dirfd(dir), seen = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        if (e->d_name[0] != '.' && atoi(e->d_name) == own) seen = 1;
    printf("fd dir lists itself: %d\n", seen);
    closedir(dir);

    /* personality: kept, inherited by fork, kept by exec */
    printf("personality old: %#x\n", personality(PER_LINUX | ADDR_NO_RANDOMIZE));
    printf("personality now: %#x\n", personality(0xffffffff));
    pid_t pid = fork();
    if (pid == 0) {
        printf("child personality: %#x\n", personality(0xffffffff));
        fflush(stdout);
        execl(argv[0], "renamed-argv0", "exec", (char *)NULL);
        _exit(99);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("exec child status: %d\n", WEXITSTATUS(status));

    /* a zombie's exit code in field 52 */
    pid = fork();
    if (pid == 0) _exit(3);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    char state = '?';
    for (int i = 0; i < 100000 && state != 'Z'; i++) {
        if (slurp(path) > 0) state = strrchr(text, ')')[2];
        else break;
        if (state != 'Z') sched_yield();
    }
    printf("zombie state: %c\n", state);
    printf("zombie exit_code: %llu\n", field(52));
    waitpid(pid, &status, 0);
    return 0;
}
