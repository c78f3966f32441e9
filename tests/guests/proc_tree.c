/* Process tree behaviour: orphans go to pid 1, waitid, process groups and sessions,
 * exec failures, a fork bomb bounded by the partition's process limit. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void orphans(void) {
    int fds[2];
    pid_t mid = fork();
    if (mid == 0) {
        pid_t grandchild = fork();
        if (grandchild == 0) {
            /* wait until the middle process is gone, then report who adopted us */
            for (int i = 0; i < 100000 && getppid() != 1; i++)
                sched_yield();
            printf("orphan adopted by %d\n", getppid());
            _exit(0);
        }
        _exit(0);
    }
    int status;
    waitpid(mid, &status, 0);
    /* pid 1 (us) reaps the grandchild too */
    pid_t got = wait(&status);
    printf("reaped orphan: %d\n", got > 0 && WIFEXITED(status));
    (void)fds;
}

static void groups(void) {
    printf("pgid=%d sid=%d\n", getpgrp(), getsid(0));
    int rc = setsid();
    printf("setsid as group leader: %d errno=%d\n", rc, errno);
    pid_t child = fork();
    if (child == 0) {
        pid_t sid = setsid();
        printf("child setsid ok=%d pgid==pid=%d sid==pid=%d\n", sid == getpid(),
               getpgrp() == getpid(), getsid(0) == getpid());
        _exit(0);
    }
    waitpid(child, NULL, 0);
    child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    rc = setpgid(child, child);
    printf("setpgid(child, child)=%d getpgid==child=%d\n", rc, getpgid(child) == child);
    kill(child, SIGKILL);
    int status;
    waitpid(child, &status, 0);
    printf("killed: signaled=%d sig=%d\n", WIFSIGNALED(status), WTERMSIG(status));
}

static void waitid_test(void) {
    pid_t child = fork();
    if (child == 0)
        _exit(42);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int rc = waitid(P_PID, child, &info, WEXITED);
    printf("waitid rc=%d signo=%d code=%d status=%d pid_ok=%d\n", rc, info.si_signo,
           info.si_code, info.si_status, info.si_pid == child);
    rc = waitid(P_ALL, 0, &info, WEXITED | WNOHANG);
    printf("waitid no children rc=%d errno=%d\n", rc, errno);
}

static void exec_failures(void) {
    char *args[] = {"x", NULL};
    int rc = execv("/no/such/file", args);
    printf("missing: %d errno=%d\n", rc, errno);
    rc = execv("/bin", args);
    printf("directory: %d errno=%d\n", rc, errno);
    rc = execv("/data.txt", args);
    printf("not executable format: %d errno=%d\n", rc, errno);
}

static void fork_bomb(void) {
    int made = 0, eagain = 0;
    pid_t pids[600];
    for (int i = 0; i < 600; i++) {
        pid_t p = fork();
        if (p == 0) {
            sleep(3);          /* outlives the loop; killed below */
            _exit(0);
        }
        if (p < 0) {
            eagain += errno == EAGAIN;
            break;
        }
        pids[made++] = p;
    }
    if (!eagain) printf("stopped by errno %d after %d\n", errno, made);
    printf("bomb: made %d, then EAGAIN=%d\n", made, eagain);
    for (int i = 0; i < made; i++)
        kill(pids[i], SIGKILL);
    int reaped = 0;
    while (wait(NULL) > 0)
        reaped++;
    printf("bomb reaped all=%d\n", reaped == made);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1 && strcmp(argv[1], "bomb") == 0) {
        fork_bomb();
        return 0;
    }
    orphans();
    groups();
    waitid_test();
    exec_failures();
    return 0;
}
