/* Memory benchmark: an idle partition. Prints one line, then blocks in nanosleep forever. */
#include <stdio.h>
#include <time.h>

int main(void) {
    puts("idle");
    fflush(stdout);
    struct timespec ts = {3600, 0};
    for (;;) nanosleep(&ts, NULL);
}
