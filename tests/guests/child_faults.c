/* Children that die of CPU faults nobody handles (a NULL write, ud2, an integer division by
 * zero, a bad jump): each dies of its signal and the parent, pid 1, reaps it and goes on. */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void null_write(void) { *(volatile int *)0 = 1; }
static void bad_opcode(void) { __asm__ volatile("ud2"); }
static void divide(void) {
    __asm__ volatile("xor %%ecx, %%ecx\n\tmov $1, %%eax\n\tcltd\n\tidivl %%ecx"
                     ::: "eax", "ecx", "edx");
}
static void jump_null(void) { ((void (*)(void))0)(); }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    void (*faults[])(void) = {null_write, bad_opcode, divide, jump_null};
    const char *names[] = {"null-write", "ud2", "divide", "jump-null"};
    for (int i = 0; i < 4; i++) {
        pid_t child = fork();
        if (child == 0) {
            faults[i]();
            _exit(0);
        }
        int status = 0;
        waitpid(child, &status, 0);
        printf("%s: signaled=%d sig=%d\n", names[i], WIFSIGNALED(status),
               WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    printf("parent goes on\n");
    return 0;
}
