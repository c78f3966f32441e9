/* fork, wait4, getpid/getppid, execve, exit status, waitpid(WNOHANG), orphans. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        printf("exec'd child argv=%s %s ppid-is-parent=%d\n", argv[1], argc > 2 ? argv[2] : "",
               getppid() > 1);
        return 7;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    int counter = 41;
    printf("parent pid=%d\n", getpid());
    pid_t pid = fork();
    if (pid == 0) {
        counter++;
        printf("child: pid!=1 %d ppid=%d counter=%d\n", getpid() != 1, getppid(), counter);
        _exit(3);
    }
    int status = 0;
    pid_t got = waitpid(pid, &status, 0);
    printf("parent: reaped=%d exited=%d code=%d counter=%d\n", got == pid, WIFEXITED(status),
           WEXITSTATUS(status), counter);
    pid = fork();
    if (pid == 0) {
        char *args[] = {argv[0], "child", "x y", NULL};
        execv(argv[0], args);
        perror("execv");
        _exit(99);
    }
    waitpid(pid, &status, 0);
    printf("exec child exited=%d code=%d\n", WIFEXITED(status), WEXITSTATUS(status));
    printf("no children: %d\n", waitpid(-1, &status, WNOHANG));
    pid = vfork();
    if (pid == 0) {
        _exit(5);
    }
    waitpid(pid, &status, 0);
    printf("vfork child code=%d\n", WEXITSTATUS(status));
    for (int i = 0; i < 20; i++) {
        if (fork() == 0)
            _exit(i);
    }
    int sum = 0;
    for (int i = 0; i < 20; i++) {
        wait(&status);
        sum += WEXITSTATUS(status);
    }
    printf("sum=%d\n", sum);
    return 0;
}
