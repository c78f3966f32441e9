/* Descriptors passed over AF_UNIX sockets (SCM_RIGHTS): datagram and stream, across fork,
 * truncated control buffers, and what happens to descriptors nobody receives. */
#include "common.h"
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>

static int send_fds(int sock, const char *data, size_t len, const int *fds, int n) {
    char control[CMSG_SPACE(sizeof(int) * 4)];
    memset(control, 0, sizeof control);
    struct iovec iov = {(void *)data, len};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (n > 0) {
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
    }
    return sendmsg(sock, &msg, 0);
}

/* Receives into buf; returns the byte count and fills fds (up to max), printing what the
 * control part held. */
static int recv_fds(int sock, char *buf, size_t len, int *fds, int *n, size_t room, int flags) {
    char control[CMSG_SPACE(sizeof(int) * 4)];
    struct iovec iov = {buf, len};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = room;
    int r = recvmsg(sock, &msg, flags);
    *n = 0;
    if (r < 0) {
        printf("recvmsg: -1 %s\n", ename(errno));
        return r;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds + *n, CMSG_DATA(c), sizeof(int) * k);
            *n += k;
        }
    }
    printf("recvmsg %d bytes [%.*s] fds %d ctrunc %d controllen-ok %d\n", r, r, buf, *n,
           !!(msg.msg_flags & MSG_CTRUNC),
           msg.msg_controllen == (*n ? CMSG_SPACE(sizeof(int) * *n) : 0));
    return r;
}

static int t_dgram(int argc, char **argv) {
    int sv[2], p[2];
    socketpair(AF_UNIX, SOCK_DGRAM, 0, sv);
    pipe(p);
    int file = open("/tmp/unixfd.txt", O_RDWR | O_CREAT | O_TRUNC, 0600);
    write(file, "file contents", 13);
    lseek(file, 5, SEEK_SET);
    int give[2] = {p[1], file};
    CALL("sendmsg", send_fds(sv[0], "two", 3, give, 2));
    close(p[1]);
    close(file);
    char buf[64];
    int got[4], n;
    recv_fds(sv[1], buf, sizeof buf, got, &n, sizeof(char[CMSG_SPACE(sizeof(int) * 4)]), 0);
    if (n != 2)
        return 1;
    write(got[0], "through", 7);
    close(got[0]);
    int r = read(p[0], buf, sizeof buf);
    printf("pipe got [%.*s]\n", r, buf);
    r = read(p[0], buf, sizeof buf);
    printf("then eof: %d\n", r);
    r = read(got[1], buf, sizeof buf);                 /* the shared offset: from 5 */
    printf("file from its offset [%.*s]\n", r, buf);
    printf("cloexec off: %d\n", fcntl(got[1], F_GETFD));
    int one[1] = {got[1]};
    send_fds(sv[0], "x", 1, one, 1);
    recv_fds(sv[1], buf, sizeof buf, got, &n, sizeof(char[CMSG_SPACE(sizeof(int) * 4)]),
             MSG_CMSG_CLOEXEC);
    printf("cloexec on: %d\n", fcntl(got[0], F_GETFD));
    return 0;
}

static int t_stream(int argc, char **argv) {
    int sv[2], p[2], q[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    pipe(p);
    pipe(q);
    int a[1] = {p[1]}, b[2] = {q[1], q[1]};
    send_fds(sv[0], "ab", 2, a, 1);
    send_fds(sv[0], "cd", 2, b, 2);
    send(sv[0], "ef", 2, 0);
    char buf[64];
    int got[4], n;
    size_t room = sizeof(char[CMSG_SPACE(sizeof(int) * 4)]);
    recv_fds(sv[1], buf, sizeof buf, got, &n, room, 0);    /* "ab" only: fds don't merge */
    recv_fds(sv[1], buf, sizeof buf, got, &n, room, 0);    /* "cdef" with two */
    send_fds(sv[0], "gh", 2, b, 2);
    recv_fds(sv[1], buf, sizeof buf, got, &n, CMSG_LEN(sizeof(int)), 0);   /* room for 1 */
    recv_fds(sv[1], buf, 0, got, &n, 0, MSG_DONTWAIT);     /* nothing left */
    return 0;
}

static int t_fork(int argc, char **argv) {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    pid_t child = fork();
    if (child == 0) {
        close(sv[0]);
        int file = open("/tmp/unixfd-child.txt", O_RDWR | O_CREAT | O_TRUNC, 0600);
        write(file, "written by the child", 20);
        lseek(file, 11, SEEK_SET);
        int give[1] = {file};
        send_fds(sv[1], "f", 1, give, 1);
        _exit(0);
    }
    close(sv[1]);
    int status;
    waitpid(child, &status, 0);
    char buf[64];
    int got[4], n;
    recv_fds(sv[0], buf, sizeof buf, got, &n, sizeof(char[CMSG_SPACE(sizeof(int) * 4)]), 0);
    int r = n ? read(got[0], buf, sizeof buf) : -1;
    printf("the child's file from its offset [%.*s]\n", r > 0 ? r : 0, buf);
    return 0;
}

static int t_unreceived(int argc, char **argv) {
    int sv[2], p[2];
    socketpair(AF_UNIX, SOCK_DGRAM, 0, sv);
    pipe(p);
    int give[1] = {p[1]};
    int bad[1] = {99};
    CALL("bad fd", send_fds(sv[0], "x", 1, bad, 1));
    send_fds(sv[0], "y", 1, give, 1);
    send_fds(sv[0], "z", 1, give, 1);
    close(p[1]);
    char buf[8];
    CALL("read drops them", read(sv[1], buf, sizeof buf));
    close(sv[1]);                     /* the second message's descriptor goes with it */
    CALL("pipe at eof", read(p[0], buf, sizeof buf));
    return 0;
}

static const struct subtest tests[] = {
    {"dgram", t_dgram}, {"stream", t_stream}, {"fork", t_fork}, {"unreceived", t_unreceived},
};

RUN_SUBTESTS(tests)
