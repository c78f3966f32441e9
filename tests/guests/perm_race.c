/* Another thread's mprotect is in force for this one at once: a thread spinning (no
 * syscalls) on one vCPU writes a page the main thread made writable on the other vCPU after
 * the spinner started. Linux: the write succeeds (mprotect returned before the flag was set).
 * Prints "ok N" with N the value the spinner wrote and read back. */
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>

static volatile int started, go;
static volatile char *page;

static void *spinner(void *arg) {
    (void)arg;
    started = 1;
    while (!go)
        ;
    page[24] = 42;
    return NULL;
}

int main(void) {
    page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return 2;
    pthread_t t;
    pthread_create(&t, NULL, spinner, NULL);
    while (!started)
        ;
    if (mprotect((void *)page, 4096, PROT_READ | PROT_WRITE) != 0)
        return 3;
    go = 1;
    pthread_join(t, NULL);
    printf("ok %d\n", page[24]);
    return 0;
}
