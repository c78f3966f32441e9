/* Worker test guest: says "ready", reads stdin to end-of-file (blocking while none comes),
 * echoes it, and exits with the number of bytes read (mod 256). */
#include <unistd.h>

int main(void) {
    char buf[4096];
    long total = 0;
    write(1, "ready\n", 6);
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0) break;
        write(1, buf, (size_t)n);
        total += n;
    }
    return (int)(total & 0xff);
}
