/* Image config test guest: prints its argv, environment and working directory, and the
 * first line of ./marker (a relative open: resolved from the working directory). */
#include <stdio.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    char buf[4096];
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = environ; *e; e++)
        printf("env:%s\n", *e);
    if (getcwd(buf, sizeof buf))
        printf("cwd=%s\n", buf);
    else
        printf("cwd-error\n");
    FILE *f = fopen("marker", "r");
    if (f && fgets(buf, sizeof buf, f))
        printf("marker=%s", buf);
    else
        printf("marker-missing\n");
    return 0;
}
