/* Stop test guest: ignores SIGTERM (once the runtime honours SIG_IGN), says "ready", and
 * sleeps forever; only a Turn Off (the end of a stop's grace) ends it. */
#include <signal.h>
#include <unistd.h>

int main(void) {
    signal(SIGTERM, SIG_IGN);
    write(1, "ready\n", 6);
    for (;;)
        sleep(1);
}
