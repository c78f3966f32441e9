/* Touch argv[1] MiB, fork (copy-on-write: nothing is copied), then let the child write its
 * copy: together they hold twice as much. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 40;
    int child_writes = argc > 2 && atoi(argv[2]);
    char *p = malloc(mib << 20);
    if (!p) {
        printf("malloc failed\n");
        return 1;
    }
    memset(p, 1, mib << 20);
    pid_t child = fork();
    if (child == 0) {
        if (child_writes) {
            for (int round = 0; round < 50; round++)
                memset(p, 2 + round, mib << 20);
        }
        _exit(p[0] == 1 || child_writes ? 0 : 3);
    }
    if (child < 0) {
        printf("fork: -1 errno=%d\n", errno);
        return 1;
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("fork: ok\n");
    if (WIFSIGNALED(status))
        printf("child killed by signal %d\n", WTERMSIG(status));
    else
        printf("child exited %d\n", WEXITSTATUS(status));
    printf("parent still sees %d\n", p[0]);
    return 0;
}
