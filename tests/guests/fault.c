/* Faults on purpose: a NULL-page write by default, or a call through a NULL function pointer. */
#include <string.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "call") == 0) {
        void (*volatile fn)(void) = 0;
        fn();
    }
    volatile int *p = (int *)0x10;
    *p = 1;
    return 0;
}
