/* Threads and fork together: every process runs threads that hand a token around with a
 * mutex and condition variable at the same addresses in every process (futexes are per
 * address space), while the parent's own threads keep running during the forks. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn = PTHREAD_COND_INITIALIZER;
static int token, rounds;

static void *player(void *arg) {
    int me = (int)(long)arg;
    for (int i = 0; i < rounds; i++) {
        pthread_mutex_lock(&lock);
        while (token % 2 != me)
            pthread_cond_wait(&turn, &lock);
        token++;
        pthread_cond_broadcast(&turn);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

static int play(int n) {
    pthread_t a, b;
    token = 0;
    rounds = n;
    pthread_create(&a, NULL, player, (void *)0L);
    pthread_create(&b, NULL, player, (void *)1L);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return token;
}

static void *background(void *arg) {
    (void)arg;
    play(2000);
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t bg;
    pthread_create(&bg, NULL, background, NULL);
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pid_t child = fork();
        if (child == 0) {
            /* only the forking thread exists here; the parent's other thread may have held
             * the lock at the fork, so the child starts its own (as POSIX requires) */
            pthread_mutex_init(&lock, NULL);
            pthread_cond_init(&turn, NULL);
            _exit(play(500) == 1000 ? 0 : 1);
        }
        int status;
        waitpid(child, &status, 0);
        ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    pthread_join(bg, NULL);
    printf("children ok=%d parent token=%d\n", ok, token);
    return 0;
}
