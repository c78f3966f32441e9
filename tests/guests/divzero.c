/* Integer division by zero. */
#include <stdlib.h>
int main(int argc, char **argv) {
    volatile int zero = argc - 1;
    return 10 / zero;
}
