/* Blocking I/O between threads: pipes, poll/select/epoll, eventfd, AF_UNIX, FIFOs. */
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

static int p[2];
static volatile int flag;

static void *writer_1m(void *arg) {
    static unsigned char buf[8192];
    size_t total = 0, sizes[] = {1, 4096, 8192, 100, 65536 % 8192 + 3000};
    unsigned k = 0;
    while (total < (1 << 20)) {
        size_t n = sizes[k++ % 5];
        if (n > (1 << 20) - total) n = (1 << 20) - total;
        for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)((total + i) * 7 + 1);
        ssize_t w = write(p[1], buf, n);
        if (w <= 0) break;
        total += w;
    }
    close(p[1]);
    return NULL;
}

static int t_pipe1m(int argc, char **argv) {
    pipe(p);
    pthread_t t;
    pthread_create(&t, NULL, writer_1m, NULL);
    static unsigned char buf[3000];
    size_t total = 0, bad = 0;
    uint32_t sum = 0;
    ssize_t r;
    while ((r = read(p[0], buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] != (unsigned char)((total + i) * 7 + 1)) bad++;
            sum = sum * 31 + buf[i];
        }
        total += r;
    }
    pthread_join(t, NULL);
    printf("read %zu bytes, %zu wrong, checksum %08x, last read %zd\n", total, bad, sum, r);
    return 0;
}

static void *late_writer(void *arg) {
    while (!flag) usleep(1000);
    usleep(50000);     /* the reader is (very likely) parked in read by now */
    write(p[1], "ping", 4);
    return NULL;
}

static int t_readblock(int argc, char **argv) {
    pipe(p);
    pthread_t t;
    pthread_create(&t, NULL, late_writer, NULL);
    char buf[16] = {0};
    flag = 1;
    double t0 = now_s();
    ssize_t r = read(p[0], buf, sizeof buf);
    printf("read %zd '%s' after waiting: %d\n", r, buf, now_s() - t0 > 0.03);
    pthread_join(t, NULL);
    return 0;
}

static volatile size_t written;
static void *big_writer(void *arg) {
    static char buf[1024];
    memset(buf, 'w', sizeof buf);
    for (int i = 0; i < 200; i++) written += write(p[1], buf, sizeof buf);
    return NULL;
}

static int t_writeblock(int argc, char **argv) {
    pipe(p);
    printf("F_GETPIPE_SZ %d\n", fcntl(p[1], F_GETPIPE_SZ));
    pthread_t t;
    pthread_create(&t, NULL, big_writer, NULL);
    size_t seen = (size_t)-1;
    double end = now_s() + 5;
    while (now_s() < end) {      /* until the writer stops making progress */
        size_t w = written;
        usleep(30000);
        if (w == written && w == seen) break;
        seen = w;
    }
    int avail = -1;
    ioctl(p[0], FIONREAD, &avail);
    printf("writer stalled at %zu bytes, FIONREAD %d\n", seen, avail);
    static char buf[4096];
    size_t total = 0;
    while (total < 200 * 1024) {
        ssize_t r = read(p[0], buf, sizeof buf);
        if (r <= 0) break;
        total += r;
    }
    pthread_join(t, NULL);
    printf("drained %zu, writer wrote %zu\n", total, (size_t)written);
    return 0;
}

static void *chunk_writer(void *arg) {
    char buf[4096];
    memset(buf, (int)(intptr_t)arg, sizeof buf);
    for (int i = 0; i < 64; i++) write(p[1], buf, sizeof buf);
    return NULL;
}

static int t_pipebuf(int argc, char **argv) {
    pipe(p);
    printf("PIPE_BUF %ld\n", fpathconf(p[0], _PC_PIPE_BUF));
    pthread_t ts[4];
    for (int i = 0; i < 4; i++) pthread_create(&ts[i], NULL, chunk_writer, (void *)(intptr_t)('a' + i));
    static char stream[4 * 64 * 4096];
    size_t total = 0;
    while (total < sizeof stream) {
        ssize_t r = read(p[0], stream + total, sizeof stream - total);
        if (r <= 0) break;
        total += r;
    }
    for (int i = 0; i < 4; i++) pthread_join(ts[i], NULL);
    int mixed = 0, counts[4] = {0};
    for (size_t off = 0; off < total; off += 4096) {
        for (int j = 1; j < 4096; j++) if (stream[off + j] != stream[off]) { mixed++; break; }
        counts[stream[off] - 'a']++;
    }
    printf("read %zu, mixed chunks %d, per writer %d %d %d %d\n", total, mixed, counts[0],
           counts[1], counts[2], counts[3]);
    return 0;
}

static int t_poll(int argc, char **argv) {
    pipe(p);
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    double t0 = now_s();
    int r = poll(&pf, 1, 100);
    double dt = now_s() - t0;
    printf("poll empty: %d revents %#x waited 0.09..2s: %d\n", r, pf.revents, dt > 0.09 && dt < 2);
    printf("poll 0 timeout: %d\n", poll(&pf, 1, 0));
    write(p[1], "x", 1);
    r = poll(&pf, 1, -1);
    printf("poll data: %d revents %#x\n", r, pf.revents);
    struct pollfd wr = {.fd = p[1], .events = POLLOUT};
    { int n_ = poll(&wr, 1, 0); printf("poll writable: %d revents %#x\n", n_, wr.revents); }
    struct pollfd bad = {.fd = 99, .events = POLLIN};
    { int n_ = poll(&bad, 1, 0); printf("poll bad fd: %d revents %#x\n", n_, bad.revents); }
    struct timespec ts = {0, 50000000};
    sigset_t mask;
    sigemptyset(&mask);
    char c;
    read(p[0], &c, 1);
    t0 = now_s();
    r = ppoll(&pf, 1, &ts, &mask);
    printf("ppoll: %d waited: %d\n", r, now_s() - t0 > 0.04);
    return 0;
}

static int t_pollhup(int argc, char **argv) {
    pipe(p);
    write(p[1], "ab", 2);
    close(p[1]);
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    { int n_ = poll(&pf, 1, 1000); printf("data+closed: %d revents %#x\n", n_, pf.revents); }
    char buf[4];
    read(p[0], buf, sizeof buf);
    { int n_ = poll(&pf, 1, 1000); printf("drained+closed: %d revents %#x\n", n_, pf.revents); }
    printf("read at EOF: %zd\n", read(p[0], buf, sizeof buf));
    int q[2];
    pipe(q);
    close(q[0]);
    struct pollfd wf = {.fd = q[1], .events = POLLOUT};
    { int n_ = poll(&wf, 1, 1000); printf("reader closed: %d revents %#x\n", n_, wf.revents); }
    return 0;
}

static int t_select(int argc, char **argv) {
    pipe(p);
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    struct timeval tv = {0, 50000};
    double t0 = now_s();
    int r = select(p[0] + 1, &rd, NULL, NULL, &tv);
    printf("select empty: %d waited: %d\n", r, now_s() - t0 > 0.04);
    write(p[1], "x", 1);
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    fd_set wr;
    FD_ZERO(&wr);
    FD_SET(p[1], &wr);
    tv.tv_sec = 1; tv.tv_usec = 0;
    r = select(p[1] + 1, &rd, &wr, NULL, &tv);
    printf("select ready: %d read %d write %d\n", r, FD_ISSET(p[0], &rd), FD_ISSET(p[1], &wr));
    struct timespec ts = {0, 30000000};
    sigset_t mask;
    sigemptyset(&mask);
    char c;
    read(p[0], &c, 1);
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    t0 = now_s();
    r = pselect(p[0] + 1, &rd, NULL, NULL, &ts, &mask);
    printf("pselect empty: %d waited: %d\n", r, now_s() - t0 > 0.02);
    return 0;
}

static int t_epoll(int argc, char **argv) {
    pipe(p);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    printf("epoll_create1 ok: %d\n", ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42};
    printf("add: %d\n", epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev));
    CALL("add twice", epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev));
    struct epoll_event out[4];
    double t0 = now_s();
    int r = epoll_wait(ep, out, 4, 50);
    printf("wait empty: %d waited: %d\n", r, now_s() - t0 > 0.04);
    write(p[1], "x", 1);
    r = epoll_wait(ep, out, 4, 1000);
    printf("wait data: %d events %#x data %llu\n", r, out[0].events,
           (unsigned long long)out[0].data.u64);
    close(p[1]);
    r = epoll_wait(ep, out, 4, 1000);
    printf("after close: %d events %#x\n", r, out[0].events);
    printf("del: %d\n", epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL));
    printf("wait none: %d\n", epoll_wait(ep, out, 4, 0));
    return 0;
}

static int efd;
static void *efd_poster(void *arg) {
    usleep(30000);
    uint64_t v = 5;
    write(efd, &v, 8);
    return NULL;
}

static int t_eventfd(int argc, char **argv) {
    efd = eventfd(0, 0);
    uint64_t v = 3;
    write(efd, &v, 8);
    v = 4;
    write(efd, &v, 8);
    v = 0;
    { ssize_t n_ = read(efd, &v, 8); printf("read %zd value %llu\n", n_, (unsigned long long)v); }
    pthread_t t;
    pthread_create(&t, NULL, efd_poster, NULL);
    printf("blocking read %zd", read(efd, &v, 8));
    printf(" value %llu\n", (unsigned long long)v);
    pthread_join(t, NULL);
    int sem = eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK);
    printf("semaphore: %zd", read(sem, &v, 8));
    printf(" %llu", (unsigned long long)v);
    read(sem, &v, 8);
    printf("\n");
    CALL("then", read(sem, &v, 8));
    CALL("short read", read(efd, &v, 4));
    return 0;
}

static int sv[2];
static void *echo_server(void *arg) {
    char buf[256];
    ssize_t r;
    while ((r = read(sv[1], buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < r; i++) if (buf[i] >= 'a' && buf[i] <= 'z') buf[i] -= 32;
        write(sv[1], buf, r);
    }
    shutdown(sv[1], SHUT_WR);
    return NULL;
}

static int t_sp_stream(int argc, char **argv) {
    printf("socketpair: %d\n", socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    pthread_t t;
    pthread_create(&t, NULL, echo_server, NULL);
    char buf[64];
    write(sv[0], "hello ", 6);
    write(sv[0], "world", 5);
    size_t got = 0;
    while (got < 11) got += read(sv[0], buf + got, sizeof buf - got);
    printf("echo: %.*s\n", (int)got, buf);
    shutdown(sv[0], SHUT_WR);
    printf("after shutdown: read %zd\n", read(sv[0], buf, sizeof buf));
    pthread_join(t, NULL);
    int type = 0;
    socklen_t len = sizeof type;
    getsockopt(sv[0], SOL_SOCKET, SO_TYPE, &type, &len);
    printf("SO_TYPE %d\n", type);
    return 0;
}

static int t_sp_dgram(int argc, char **argv) {
    printf("socketpair: %d\n", socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    send(sv[0], "one", 3, 0);
    send(sv[0], "three", 5, 0);
    send(sv[0], "", 0, 0);
    send(sv[0], "x", 1, 0);
    char buf[64];
    for (int i = 0; i < 4; i++) {
        ssize_t r = recv(sv[1], buf, sizeof buf, 0);
        printf("message %d: %zd '%.*s'\n", i, r, (int)(r > 0 ? r : 0), buf);
    }
    send(sv[0], "truncated", 9, 0);
    ssize_t r = recv(sv[1], buf, 4, 0);
    printf("short buffer: %zd '%.4s'\n", r, buf);
    CALL("nothing left", recv(sv[1], buf, sizeof buf, MSG_DONTWAIT));
    return 0;
}

static void *client(void *arg) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, "/tmp/sock");
    while (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) usleep(1000);
    write(s, "via path", 8);
    char buf[8];
    read(s, buf, sizeof buf);
    close(s);
    return NULL;
}

static int t_unix_bind(int argc, char **argv) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, "/tmp/sock");
    printf("bind: %d\n", bind(s, (struct sockaddr *)&addr, sizeof addr));
    CALL("bind again", bind(socket(AF_UNIX, SOCK_STREAM, 0), (struct sockaddr *)&addr,
                            sizeof addr));
    printf("listen: %d\n", listen(s, 4));
    struct stat st;
    stat("/tmp/sock", &st);
    printf("is socket: %d\n", S_ISSOCK(st.st_mode));
    pthread_t t;
    pthread_create(&t, NULL, client, NULL);
    int c = accept(s, NULL, NULL);
    char buf[16] = {0};
    ssize_t r = read(c, buf, sizeof buf);
    printf("accepted and read %zd '%.*s'\n", r, (int)r, buf);
    write(c, "ok", 2);
    pthread_join(t, NULL);
    struct sockaddr_un name;
    socklen_t len = sizeof name;
    getsockname(s, (struct sockaddr *)&name, &len);
    printf("getsockname %s\n", name.sun_path);
    printf("peer closed: read %zd\n", read(c, buf, sizeof buf));
    unlink("/tmp/sock");
    return 0;
}

static void *fifo_writer(void *arg) {
    int fd = open("/tmp/fifo", O_WRONLY);
    write(fd, "through fifo", 12);
    close(fd);
    return NULL;
}

static int t_mkfifo(int argc, char **argv) {
    printf("mkfifo: %d\n", mkfifo("/tmp/fifo", 0600));
    struct stat st;
    stat("/tmp/fifo", &st);
    printf("is fifo: %d mode %o\n", S_ISFIFO(st.st_mode), st.st_mode & 0777);
    pthread_t t;
    pthread_create(&t, NULL, fifo_writer, NULL);
    int fd = open("/tmp/fifo", O_RDONLY);   /* blocks until the writer opens */
    char buf[32];
    size_t got = 0;
    ssize_t r;
    while ((r = read(fd, buf + got, sizeof buf - got)) > 0) got += r;
    printf("read '%.*s' then %zd\n", (int)got, buf, r);
    pthread_join(t, NULL);
    close(fd);
    CALL("nonblocking writer, no reader", open("/tmp/fifo", O_WRONLY | O_NONBLOCK));
    return 0;
}

static int t_pipe2nb(int argc, char **argv) {
    printf("pipe2: %d\n", pipe2(p, O_NONBLOCK | O_CLOEXEC));
    int fl = fcntl(p[0], F_GETFL);
    printf("F_GETFL nonblock %d accmode %d\n", (fl & O_NONBLOCK) != 0, fl & O_ACCMODE);
    printf("F_GETFL write end accmode %d\n", fcntl(p[1], F_GETFL) & O_ACCMODE);
    printf("F_GETFD cloexec %d\n", fcntl(p[0], F_GETFD) & FD_CLOEXEC);
    char c;
    CALL("empty read", read(p[0], &c, 1));
    fcntl(p[0], F_SETFL, fl & ~O_NONBLOCK);
    printf("after F_SETFL nonblock %d\n", (fcntl(p[0], F_GETFL) & O_NONBLOCK) != 0);
    static char big[70000];
    printf("full pipe write %zd\n", write(p[1], big, sizeof big));
    CALL("then", write(p[1], big, 1));
    return 0;
}

static void on_intr(int sig) { (void)sig; }

/* A blocking pipe write a signal interrupts after it moved 64 KiB returns that count (not
 * EINTR, and not a restart), with and without SA_RESTART; one that moved nothing gets EINTR
 * or restarts. */
static int t_write_intr(int argc, char **argv) {
    static char buf[100000];
    for (int restart = 0; restart < 2; restart++) {
        int p[2];
        pipe(p);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_intr;
        sa.sa_flags = restart ? SA_RESTART : 0;
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {{0, 0}, {0, 200000}};
        setitimer(ITIMER_REAL, &it, NULL);
        errno = 0;
        long r = write(p[1], buf, sizeof buf);
        printf("SA_RESTART=%d: write %ld %s\n", restart, r, ename(errno));
        if (!restart) {                  /* the pipe is full now: nothing moves, then EINTR */
            setitimer(ITIMER_REAL, &it, NULL);
            errno = 0;
            r = write(p[1], buf, 10);
            printf("full pipe: write %ld %s\n", r, ename(errno));
        }
        close(p[0]);
        close(p[1]);
    }
    return 0;
}

static struct subtest tests[] = {
    {"pipe1m", t_pipe1m}, {"readblock", t_readblock}, {"writeblock", t_writeblock},
    {"pipebuf", t_pipebuf}, {"poll", t_poll}, {"pollhup", t_pollhup}, {"select", t_select},
    {"epoll", t_epoll}, {"eventfd", t_eventfd}, {"sp_stream", t_sp_stream},
    {"sp_dgram", t_sp_dgram}, {"unix_bind", t_unix_bind}, {"mkfifo", t_mkfifo},
    {"pipe2nb", t_pipe2nb}, {"write_intr", t_write_intr},
};
RUN_SUBTESTS(tests)
