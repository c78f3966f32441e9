/* A process tree for save/restore: a producer child writes numbers through a pipe while
 * the parent sums them; an early child stays a zombie until the end; the producer holds a
 * blocked, pending SIGUSR1 that it takes only at the end. The final line depends on all.
 * `sr_pipeline N PROGRAM`: the producer execs PROGRAM (`PROGRAM produce N FD`), which may be
 * this program built for the other architecture (the mask and the pending signal survive
 * the exec). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int usr1;
static void on_usr1(int sig) { (void)sig; usr1++; }

static int produce(long n, int fd, sigset_t *block) {
    FILE *out = fdopen(fd, "w");
    unsigned long long mix = 1;
    for (long i = 0; i < n; i++) {
        for (int k = 0; k < 200; k++)
            mix = mix * 6364136223846793005ULL + 1442695040888963407ULL;
        fprintf(out, "%llu\n", (mix >> 33) % 1000);
        if (i % (n / 10) == 0)
            printf("progress %ld%% (%d-bit)\n", i * 100 / n, (int)(8 * sizeof(void *)));
    }
    fclose(out);
    sigprocmask(SIG_UNBLOCK, block, NULL);       /* the pending SIGUSR1 arrives now */
    return usr1 == 1 ? 0 : 3;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    if (argc == 4 && strcmp(argv[1], "produce") == 0) {
        signal(SIGUSR1, on_usr1);                /* exec reset it; still blocked, pending */
        return produce(atol(argv[2]), atoi(argv[3]), &block);
    }
    long n = argc > 1 ? atol(argv[1]) : 20000;
    const char *program = argc > 2 ? argv[2] : NULL;
    pid_t zombie = fork();
    if (zombie == 0)
        _exit(7);
    int fds[2];
    if (pipe(fds) != 0)
        return 1;
    signal(SIGUSR1, on_usr1);
    sigprocmask(SIG_BLOCK, &block, NULL);        /* inherited: the producer starts blocked */
    pid_t producer = fork();
    if (producer == 0) {
        close(fds[0]);
        if (program != NULL) {
            char count[32], fd[16];
            snprintf(count, sizeof count, "%ld", n);
            snprintf(fd, sizeof fd, "%d", fds[1]);
            execl(program, program, "produce", count, fd, (char *)NULL);
            _exit(4);
        }
        _exit(produce(n, fds[1], &block));
    }
    close(fds[1]);
    kill(producer, SIGUSR1);                     /* pending in the producer until the end */
    FILE *in = fdopen(fds[0], "r");
    unsigned long sum = 0, value, count = 0;
    while (fscanf(in, "%lu", &value) == 1) {
        sum += value;
        count++;
    }
    int pstatus = 0, zstatus = 0;
    waitpid(producer, &pstatus, 0);
    waitpid(zombie, &zstatus, 0);
    printf("final=%lu count=%lu producer=%d zombie=%d\n", sum, count, WEXITSTATUS(pstatus),
           WEXITSTATUS(zstatus));
    return 0;
}
