/* Writes through a NULL pointer. */
int main(void) {
    volatile int *p = (int *)0x10;
    *p = 1;
    return 0;
}
