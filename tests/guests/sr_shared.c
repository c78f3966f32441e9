/* Save/restore with MAP_SHARED file mappings: two mappings of one file in the writable
 * layer, saved while mapped; after the restore a write through one still reaches the other
 * mapping and the file, as before the save. A mapping of a file unlinked since keeps its
 * data. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int fd = open("/data/shared.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    char page[8192];
    memset(page, 'a', sizeof page);
    write(fd, page, sizeof page);
    char *one = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *two = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 4096);
    int gone = open("/data/gone.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    write(gone, page, 4096);
    char *orphan = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, gone, 0);
    if (one == MAP_FAILED || two == MAP_FAILED || orphan == MAP_FAILED)
        return 1;
    close(fd);                                   /* the mappings keep the file */
    close(gone);
    unlink("/data/gone.dat");
    one[0] = 'B';
    orphan[0] = 'O';
    printf("mapped %c\n", two[0]);
    for (int i = 0; i < 150; i++) {              /* 1.5 s for the save to come */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    one[4096] = 'R';                             /* after the restore */
    char buf[2] = {0};
    fd = open("/data/shared.dat", O_RDONLY);
    pread(fd, buf, 1, 0);
    pread(fd, buf + 1, 1, 4096);
    printf("final second mapping %c file %c%c orphan %c\n", two[0], buf[0], buf[1], orphan[0]);
    return 0;
}
