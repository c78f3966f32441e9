/* A handler that corrupts its ucontext: what sigreturn restores must stay a user context. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

static const char *mode = "flags";

#ifdef __x86_64__
#define PC REG_RIP
#define SP REG_RSP
#else
#define PC REG_EIP
#define SP REG_ESP
#endif

static void corrupt(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = ctx;
    (void)sig; (void)si;
    if (!strcmp(mode, "flags")) {
        /* IOPL 3, VM, NT, VIF...; not DF, a user flag sigreturn restores (as on Linux) */
        uc->uc_mcontext.gregs[REG_EFL] = -1 & ~0x400;
#ifdef __x86_64__
        uc->uc_mcontext.gregs[REG_CSGSFS] = 0x0010000800100008LL;   /* kernel selectors */
#else
        uc->uc_mcontext.gregs[REG_CS] = 0x10;
        uc->uc_mcontext.gregs[REG_SS] = 0x10;
        uc->uc_mcontext.gregs[REG_DS] = 0x13;
        uc->uc_mcontext.gregs[REG_ES] = 0xfffb;
#endif
#ifdef __x86_64__
        uc->uc_mcontext.fpregs->mxcsr = 0xffffffff;
#endif
        sigfillset(&uc->uc_sigmask);                     /* SIGKILL/SIGSTOP stay unblocked */
    } else if (!strcmp(mode, "pc")) {
        uc->uc_mcontext.gregs[PC] = 0x10;
    } else if (!strcmp(mode, "sp")) {
        uc->uc_mcontext.gregs[SP] = 0x10;
    } else if (!strcmp(mode, "fpstate")) {
        uc->uc_mcontext.fpregs = (void *)0x10;
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1) mode = argv[1];
    if (!strcmp(mode, "term")) {      /* no handler: pid 1 (init) has it discarded */
        raise(SIGTERM);
        printf("survived SIGTERM\n");
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = corrupt;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    unsigned long flags;
#ifdef __x86_64__
    __asm__ volatile("pushfq; popq %0" : "=r"(flags));
#else
    __asm__ volatile("pushfl; popl %0" : "=r"(flags));
#endif
    unsigned short cs, ss;
    __asm__ volatile("mov %%cs, %0; mov %%ss, %1" : "=r"(cs), "=r"(ss));
    sigset_t now;
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("iopl=%lu if=%lu cs_rpl=%u ss_rpl=%u usr1_blocked=%d\n", (flags >> 12) & 3,
           (flags >> 9) & 1, cs & 3, ss & 3, sigismember(&now, SIGUSR1));
    if (argc > 2) {
        __asm__ volatile("cli");                          /* must still fault */
        printf("cli did not fault\n");
    }
    return 0;
}
