/* Blocking I/O inside a partition: pipes, poll/select/epoll, eventfd, AF_UNIX, FIFOs.
   argv[1] names the case; each prints deterministic lines (timings as pass/fail only). */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Print a call's result and errno name in a defined order. */
#define SHOW(label, expr) do { long r_ = (long)(expr); int e_ = errno; \
    printf("%s %ld %s\n", label, r_, r_ < 0 ? strerrorname_np(e_) : "ok"); } while (0)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nap(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int p[2];
static const char *prog;
static volatile int flag;

static void *late_writer(void *arg) {
    nap(200);
    write(p[1], "hello", 5);
    return arg;
}

static int sleepread(void) {
    pipe(p);
    pthread_t th;
    double t0 = now();
    pthread_create(&th, NULL, late_writer, NULL);
    char buf[16];
    ssize_t r = read(p[0], buf, sizeof buf);
    double dt = now() - t0;
    pthread_join(th, NULL);
    printf("read %zd '%.*s' waited %s\n", r, (int)r, buf, dt >= 0.15 ? "yes" : "no");
    return 0;
}

static void *big_writer(void *arg) {
    static char big[200000];
    memset(big, 'x', sizeof big);
    ssize_t w = write(p[1], big, sizeof big);
    flag = 1;
    *(ssize_t *)arg = w;
    return NULL;
}

static int fill(void) {
    pipe(p);
    pthread_t th;
    ssize_t w = 0;
    pthread_create(&th, NULL, big_writer, &w);
    nap(150);
    int done_early = flag;
    int avail = 0;
    ioctl(p[0], FIONREAD, &avail);
    long got = 0;
    char buf[5000];
    while (got < 200000) {
        ssize_t r = read(p[0], buf, sizeof buf);
        if (r <= 0) break;
        got += r;
    }
    pthread_join(th, NULL);
    printf("writer finished before drain: %d, FIONREAD %d, write returned %zd, read %ld\n",
           done_early, avail, w, got);
    return 0;
}

#define RECS 300
static void *rec_writer(void *arg) {
    char rec[4096];
    memset(rec, (int)(long)arg, sizeof rec);
    for (int i = 0; i < RECS; i++)
        if (write(p[1], rec, sizeof rec) != sizeof rec) { printf("short write\n"); exit(5); }
    return NULL;
}

static int atomic(void) {
    pipe(p);
    pthread_t th[4];
    for (long i = 0; i < 4; i++) pthread_create(&th[i], NULL, rec_writer, (void *)('a' + i));
    char rec[4096];
    int bad = 0, counts[4] = {0};
    for (int n = 0; n < 4 * RECS; n++) {
        size_t got = 0;
        while (got < sizeof rec) {
            ssize_t r = read(p[0], rec + got, sizeof rec - got);
            if (r <= 0) { printf("read failed\n"); return 1; }
            got += r;
        }
        for (int i = 1; i < 4096; i++) if (rec[i] != rec[0]) { bad++; break; }
        if (rec[0] >= 'a' && rec[0] < 'e') counts[rec[0] - 'a']++;
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    printf("mixed records %d, per writer %d %d %d %d\n", bad, counts[0], counts[1], counts[2], counts[3]);
    return 0;
}

static int polltimeout(void) {
    pipe(p);
    struct pollfd pf = {p[0], POLLIN, 0};
    double t0 = now();
    int r = poll(&pf, 1, 250);
    double dt = now() - t0;
    printf("poll %d revents %d waited %s\n", r, pf.revents, dt >= 0.25 ? "enough" : "too little");
    struct timespec ts = {0, 100000000};
    t0 = now();
    r = ppoll(&pf, 1, &ts, NULL);
    dt = now() - t0;
    printf("ppoll %d waited %s\n", r, dt >= 0.1 ? "enough" : "too little");
    r = poll(&pf, 1, 0);
    printf("poll0 %d\n", r);
    write(p[1], "z", 1);
    pf.events = POLLIN | POLLOUT;
    r = poll(&pf, 1, -1);
    printf("poll ready %d revents %#x\n", r, pf.revents);
    struct pollfd w = {p[1], POLLIN | POLLOUT, 0};
    r = poll(&w, 1, -1);
    printf("write end %d revents %#x\n", r, w.revents);
    struct pollfd bad = {999, POLLIN, 0};
    r = poll(&bad, 1, 0);
    printf("bad fd %d revents %#x\n", r, bad.revents);
    static struct pollfd many[3000];
    r = poll(many, 3000, 0);
    printf("huge nfds %s\n", r < 0 ? strerrorname_np(errno) : "accepted (a high fd limit)");
    return 0;
}

static void *closer(void *arg) {
    nap(100);
    close(p[1]);
    return arg;
}

static int pollhup(void) {
    pipe(p);
    write(p[1], "ab", 2);
    pthread_t th;
    pthread_create(&th, NULL, closer, NULL);
    char c[2];
    read(p[0], c, 2);
    struct pollfd pf = {p[0], POLLIN, 0};
    int r = poll(&pf, 1, 5000);
    pthread_join(th, NULL);
    printf("poll %d revents %#x\n", r, pf.revents);
    printf("read at EOF %zd\n", read(p[0], c, 2));
    int q[2];
    pipe(q);
    close(q[0]);
    struct pollfd wf = {q[1], POLLOUT, 0};
    r = poll(&wf, 1, 0);
    printf("no reader: poll %d revents %#x\n", r, wf.revents);
    return 0;
}

static int selects(void) {
    pipe(p);
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    struct timeval tv = {0, 150000};
    double t0 = now();
    int r = select(p[0] + 1, &rd, NULL, NULL, &tv);
    double dt = now() - t0;
    printf("select %d isset %d waited %s\n", r, FD_ISSET(p[0], &rd), dt >= 0.15 ? "enough" : "too little");
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    struct timespec ts = {0, 120000000};
    sigset_t mask;
    sigemptyset(&mask);
    t0 = now();
    r = pselect(p[0] + 1, &rd, NULL, NULL, &ts, &mask);
    dt = now() - t0;
    printf("pselect %d waited %s\n", r, dt >= 0.12 ? "enough" : "too little");
    write(p[1], "q", 1);
    fd_set wr;
    FD_ZERO(&rd);
    FD_ZERO(&wr);
    FD_SET(p[0], &rd);
    FD_SET(p[1], &rd);
    FD_SET(p[1], &wr);
    r = select(p[1] + 1, &rd, &wr, NULL, NULL);
    printf("ready %d rd0 %d rd1 %d wr1 %d\n", r, FD_ISSET(p[0], &rd), FD_ISSET(p[1], &rd), FD_ISSET(p[1], &wr));
    FD_ZERO(&rd);
    FD_SET(77, &rd);
    tv.tv_sec = 0; tv.tv_usec = 0;
    r = select(78, &rd, NULL, NULL, &tv);
    printf("bad fd %d %s\n", r, r < 0 ? strerrorname_np(errno) : "-");
    return 0;
}

static int efd;
static void *efd_poker(void *arg) {
    nap(100);
    uint64_t one = 5;
    write(efd, &one, 8);
    return arg;
}

static int epolls(void) {
    pipe(p);
    efd = eventfd(0, EFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1111};
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    ev.data.u64 = 2222;
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    SHOW("add again", epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev));
    struct epoll_event out[4];
    int n = epoll_wait(ep, out, 4, 50);
    printf("timeout %d\n", n);
    pthread_t th;
    pthread_create(&th, NULL, efd_poker, NULL);
    n = epoll_wait(ep, out, 4, -1);
    pthread_join(th, NULL);
    printf("woken %d data %llu events %#x\n", n, (unsigned long long)out[0].data.u64, out[0].events);
    n = epoll_wait(ep, out, 4, 0);
    printf("level again %d\n", n);
    uint64_t v;
    read(efd, &v, 8);
    printf("eventfd value %llu\n", (unsigned long long)v);
    write(p[1], "xy", 2);
    n = epoll_wait(ep, out, 4, 0);
    printf("pipe %d data %llu\n", n, (unsigned long long)out[0].data.u64);
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = 3333;
    epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &ev);
    n = epoll_wait(ep, out, 4, 0);
    int n2 = epoll_wait(ep, out, 4, 0);
    printf("oneshot %d then %d\n", n, n2);
    epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL);
    SHOW("del again", epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL));
    int fd = open(prog, O_RDONLY);
    SHOW("regular file", epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    return 0;
}

static int eventfds(void) {
    int e = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    uint64_t v;
    for (int i = 0; i < 4; i++) {
        ssize_t r = read(e, &v, 8);
        printf("read %zd value %llu %s\n", r, r > 0 ? (unsigned long long)v : 0ULL, r < 0 ? strerrorname_np(errno) : "");
    }
    v = 0xfffffffffffffffeULL;
    printf("write max %zd\n", write(e, &v, 8));
    v = 1;
    ssize_t r = write(e, &v, 8);
    printf("overflow %zd %s\n", r, r < 0 ? strerrorname_np(errno) : "");
    SHOW("short read", read(e, &v, 4));
    printf("flags nonblock %d\n", !!(fcntl(e, F_GETFL) & O_NONBLOCK));
    return 0;
}

static int pairs(void) {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    send(sv[0], "hello", 5, 0);
    send(sv[0], "world", 5, 0);
    char buf[64];
    ssize_t r = recv(sv[1], buf, sizeof buf, 0);
    printf("stream %zd '%.*s'\n", r, (int)r, buf);
    shutdown(sv[0], SHUT_WR);
    printf("after shutdown %zd\n", recv(sv[1], buf, sizeof buf, 0));
    int dv[2];
    socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dv);
    send(dv[0], "a", 1, 0);
    send(dv[0], "bcd", 3, 0);
    send(dv[0], "efghij", 6, 0);
    for (int i = 0; i < 2; i++) {
        r = recv(dv[1], buf, sizeof buf, 0);
        printf("dgram %zd '%.*s'\n", r, (int)r, buf);
    }
    r = recv(dv[1], buf, 2, MSG_TRUNC);
    printf("truncated %zd '%.2s'\n", r, buf);
    SHOW("empty", recv(dv[1], buf, sizeof buf, MSG_DONTWAIT));
    int type = 0;
    socklen_t len = sizeof type;
    getsockopt(dv[0], SOL_SOCKET, SO_TYPE, &type, &len);
    printf("type %d cloexec %d\n", type, fcntl(dv[0], F_GETFD));
    int qv[2];
    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qv);
    write(qv[0], "one", 3);
    write(qv[0], "three", 5);
    r = read(qv[1], buf, sizeof buf);
    printf("seqpacket %zd\n", r);
    close(qv[0]);
    r = read(qv[1], buf, sizeof buf);
    ssize_t eof = read(qv[1], buf, sizeof buf);
    printf("seqpacket %zd then eof %zd\n", r, eof);
    SHOW("inet", socket(AF_INET, SOCK_STREAM, 0));
    return 0;
}

static struct sockaddr_un addr;
static socklen_t addrlen;

static void *client(void *arg) {
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&addr, addrlen)) { perror("connect"); return arg; }
    write(c, "ping", 4);
    char buf[16];
    ssize_t r = read(c, buf, sizeof buf);
    printf("client got %zd '%.*s'\n", r, (int)r, buf);
    close(c);
    return arg;
}

static int serve(const char *label) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (bind(s, (struct sockaddr *)&addr, addrlen)) { perror("bind"); return 1; }
    if (listen(s, 4)) { perror("listen"); return 1; }
    pthread_t th;
    pthread_create(&th, NULL, client, NULL);
    struct sockaddr_un peer;
    socklen_t plen = sizeof peer;
    int a = accept(s, (struct sockaddr *)&peer, &plen);
    char buf[16];
    ssize_t r = read(a, buf, sizeof buf);
    printf("%s: server got %zd '%.*s' peer len %d\n", label, r, (int)r, buf, (int)plen);
    write(a, "pong", 4);
    r = read(a, buf, sizeof buf);
    printf("%s: eof %zd\n", label, r);
    pthread_join(th, NULL);
    struct sockaddr_un me;
    socklen_t mlen = sizeof me;
    getsockname(s, (struct sockaddr *)&me, &mlen);
    printf("%s: name len %d\n", label, (int)mlen);
    close(a);
    close(s);
    return 0;
}

static int unixsock(void) {
    mkdir("/tmp", 0777);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, "/tmp/sock");
    addrlen = sizeof addr;
    serve("path");
    struct stat st;
    stat("/tmp/sock", &st);
    printf("node is socket %d\n", S_ISSOCK(st.st_mode));
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    SHOW("bind again", bind(s, (struct sockaddr *)&addr, addrlen));
    SHOW("connect stale", connect(s, (struct sockaddr *)&addr, addrlen));
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, "\0abstract-name", 14);
    addrlen = offsetof(struct sockaddr_un, sun_path) + 14;
    serve("abstract");
    return 0;
}

static void *fifo_writer(void *arg) {
    int w = open("/fifo", O_WRONLY);
    write(w, "through the fifo", 16);
    close(w);
    return arg;
}

static int fifo(void) {
    if (mkfifo("/fifo", 0600)) { perror("mkfifo"); return 1; }
    struct stat st;
    stat("/fifo", &st);
    printf("is fifo %d\n", S_ISFIFO(st.st_mode));
    SHOW("nonblock writer", open("/fifo", O_WRONLY | O_NONBLOCK));
    pthread_t th;
    pthread_create(&th, NULL, fifo_writer, NULL);
    int r = open("/fifo", O_RDONLY);
    char buf[32];
    size_t got = 0;
    ssize_t n;
    while ((n = read(r, buf + got, sizeof buf - got)) > 0) got += n;
    pthread_join(th, NULL);
    printf("fifo read %zu '%.*s'\n", got, (int)got, buf);
    int nb = open("/fifo", O_RDONLY | O_NONBLOCK);
    ssize_t nr = read(nb, buf, 4);
    printf("nonblock reader ok %d, read %zd\n", nb >= 0, nr);
    return 0;
}

static int nonblock(void) {
    int q[2];
    pipe2(q, O_NONBLOCK | O_CLOEXEC);
    printf("F_GETFL %#x F_GETFD %d\n", fcntl(q[0], F_GETFL), fcntl(q[0], F_GETFD));
    char c;
    SHOW("read empty", read(q[0], &c, 1));
    static char chunk[1000];
    long total = 0;
    for (;;) {
        ssize_t w = write(q[1], chunk, sizeof chunk);
        if (w < 0) break;
        total += w;
    }
    printf("filled %ld then %s\n", total, strerrorname_np(errno));
    fcntl(q[0], F_SETFL, 0);
    printf("after F_SETFL %#x\n", fcntl(q[0], F_GETFL));
    int on = 1;
    ioctl(q[0], FIONBIO, &on);
    printf("after FIONBIO %#x\n", fcntl(q[0], F_GETFL));
    int d = dup(q[0]);
    printf("dup shares flags %#x\n", fcntl(d, F_GETFL));
    SHOW("pipe2 bad flags", pipe2(q, 0x1));
    return 0;
}

/* SIGPIPE's default action ends a writer; pid 1 (init) has it discarded and sees EPIPE. */
static int epipe(void) {
    int q[2];
    pipe(q);
    close(q[0]);
    printf("writing\n");
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        write(q[1], "x", 1);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    printf("child: signaled %d sig %d\n", WIFSIGNALED(status), WTERMSIG(status));
    errno = 0;
    ssize_t r = write(q[1], "x", 1);
    printf("pid 1: write %zd %s\n", r, strerrorname_np(errno));
    return 0;
}

static int manypipes(void) {
    int count = 0, q[2];
    while (pipe(q) == 0) count++;
    printf("pipes %d then %s\n", count, strerrorname_np(errno));
    return 0;
}

static void *fd_closer(void *arg) {
    nap(100);
    close(p[0]);
    nap(50);
    close(p[1]);
    return arg;
}

static int pollclosed(void) {
    pipe(p);
    pthread_t th;
    pthread_create(&th, NULL, fd_closer, NULL);
    struct pollfd pf = {p[0], POLLIN, 0};
    int r = poll(&pf, 1, 3000);
    pthread_join(th, NULL);
    printf("poll on a closed fd returned %d\n", r);
    return 0;
}

int main(int argc, char **argv) {
    const char *c = argc > 1 ? argv[1] : "";
    prog = argv[0];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(c, "sleepread")) return sleepread();
    if (!strcmp(c, "fill")) return fill();
    if (!strcmp(c, "atomic")) return atomic();
    if (!strcmp(c, "polltimeout")) return polltimeout();
    if (!strcmp(c, "pollhup")) return pollhup();
    if (!strcmp(c, "select")) return selects();
    if (!strcmp(c, "epoll")) return epolls();
    if (!strcmp(c, "eventfd")) return eventfds();
    if (!strcmp(c, "pairs")) return pairs();
    if (!strcmp(c, "unixsock")) return unixsock();
    if (!strcmp(c, "fifo")) return fifo();
    if (!strcmp(c, "nonblock")) return nonblock();
    if (!strcmp(c, "epipe")) return epipe();
    if (!strcmp(c, "manypipes")) return manypipes();
    if (!strcmp(c, "pollclosed")) return pollclosed();
    printf("unknown case %s\n", c);
    return 2;
}
