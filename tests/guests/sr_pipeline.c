/* A process tree for save/restore: a producer child writes numbers through a pipe while
 * the parent sums them; an early child stays a zombie until the end; the producer holds a
 * blocked, pending SIGUSR1 that it takes only at the end. The final line depends on all. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int usr1;
static void on_usr1(int sig) { (void)sig; usr1++; }

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000;
    setvbuf(stdout, NULL, _IONBF, 0);
    pid_t zombie = fork();
    if (zombie == 0)
        _exit(7);
    int fds[2];
    if (pipe(fds) != 0)
        return 1;
    signal(SIGUSR1, on_usr1);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, NULL);        /* inherited: the producer starts blocked */
    pid_t producer = fork();
    if (producer == 0) {
        close(fds[0]);
        FILE *out = fdopen(fds[1], "w");
        unsigned long mix = 1;
        for (long i = 0; i < n; i++) {
            for (int k = 0; k < 200; k++)
                mix = mix * 6364136223846793005UL + 1442695040888963407UL;
            fprintf(out, "%lu\n", (mix >> 33) % 1000);
            if (i % (n / 10) == 0)
                printf("progress %ld%%\n", i * 100 / n);
        }
        fclose(out);
        sigprocmask(SIG_UNBLOCK, &block, NULL);  /* the pending SIGUSR1 arrives now */
        _exit(usr1 == 1 ? 0 : 3);
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
