/* Save/restore with descriptors in flight: a pipe's write end and an open file travel in an
 * SCM_RIGHTS message that nobody has received when the partition is saved (the sender closed
 * its own copies); after the restore the receiver gets them and uses them. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int sv[2], p[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    pipe(p);
    int file = open("/data/rights.txt", O_RDWR | O_CREAT | O_TRUNC, 0600);
    write(file, "offset travels", 14);
    lseek(file, 7, SEEK_SET);
    char control[CMSG_SPACE(2 * sizeof(int))];
    memset(control, 0, sizeof control);
    struct iovec iov = {"payload", 7};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(2 * sizeof(int));
    int fds[2] = {p[1], file};
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    if (sendmsg(sv[0], &msg, 0) != 7)
        return 1;
    close(p[1]);
    close(file);
    printf("in flight\n");
    for (int i = 0; i < 150; i++) {              /* 1.5 s for the save to come */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    char buf[32];
    struct iovec in = {buf, sizeof buf};
    struct msghdr rmsg = {0};
    rmsg.msg_iov = &in;
    rmsg.msg_iovlen = 1;
    rmsg.msg_control = control;
    rmsg.msg_controllen = sizeof control;
    int n = recvmsg(sv[1], &rmsg, 0);
    struct cmsghdr *r = CMSG_FIRSTHDR(&rmsg);
    if (n != 7 || r == NULL || r->cmsg_len != CMSG_LEN(2 * sizeof(int)))
        return 2;
    memcpy(fds, CMSG_DATA(r), sizeof fds);
    write(fds[0], "through the pipe", 16);
    close(fds[0]);
    int got = read(p[0], buf, sizeof buf);
    int eof = read(p[0], buf + got, sizeof buf - got);
    char rest[16];
    int m = read(fds[1], rest, sizeof rest);
    printf("final=[%.*s] eof=%d file=[%.*s]\n", got, buf, eof, m, rest);
    return 0;
}
