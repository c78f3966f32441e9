/* MAP_SHARED file mappings: writes reach the file, read(), a second mapping and a child. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    int fd = open("/shared.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    char page[8192];
    memset(page, 'a', sizeof page);
    write(fd, page, sizeof page);
    char *one = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (one == MAP_FAILED || two == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    one[0] = 'X';
    one[4096] = 'Y';
    char buf[2];
    pread(fd, buf, 1, 0);
    printf("second mapping sees %c, read() sees %c\n", two[0], buf[0]);
    printf("msync=%d\n", msync(one, 8192, MS_SYNC));
    pid_t child = fork();
    if (child == 0) {
        two[1] = 'C';                   /* the child's write to a shared mapping is shared */
        _exit(0);
    }
    waitpid(child, NULL, 0);
    printf("after the child wrote: %c\n", one[1]);
    munmap(one, 8192);
    munmap(two, 8192);
    close(fd);
    fd = open("/shared.dat", O_RDONLY);
    read(fd, buf, 2);
    printf("file starts %c%c\n", buf[0], buf[1]);
    char *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    printf("shared writable map of a read-only fd fails: %d\n", ro == MAP_FAILED);
    char *priv = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    priv[0] = 'P';
    pread(fd, buf, 1, 0);
    printf("private write stays private: %c\n", buf[0]);
    printf("msync of unmapped: %d\n", msync((void *)0x10000, 4096, MS_SYNC));
    return 0;
}
