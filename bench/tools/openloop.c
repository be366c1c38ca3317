// openloop: a constant-rate (open-loop) HTTP/1.1 load generator that corrects for
// coordinated omission, in the manner of wrk2: every request has an intended send time on a
// fixed schedule, and its latency is measured from that intended time, so a stall of the
// server shows up in the percentiles instead of silently slowing the generator down.
//
// usage: openloop HOST PORT HOSTHEADER RATE SECONDS CONNECTIONS
// prints: requests=N errors=E p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=.. achieved_rps=..
//
// Requests are spread round-robin over keep-alive connections; a connection carries one
// request at a time (no pipelining), and requests due while all connections are busy wait in
// a queue (their latency keeps counting). Responses must carry Content-Length.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256
#define BUF 65536

typedef struct {
    int fd;
    int busy;
    uint64_t intended_ns;   // intended send time of the request in flight
    char buf[BUF];
    size_t len;
} conn_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int connect_to(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); exit(2); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

// Returns the length of a complete response at the start of buf, or 0 if incomplete.
static size_t complete_response(const char *buf, size_t len) {
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - buf) + 4;
    const char *cl = memmem(buf, head, "ontent-Length:", 14);
    if (!cl) cl = memmem(buf, head, "ontent-length:", 14);
    size_t body = cl ? (size_t)strtoul(cl + 14, NULL, 10) : 0;
    return len >= head + body ? head + body : 0;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT HOSTHEADER RATE SECONDS CONNECTIONS\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[4]);
    double seconds = atof(argv[5]);
    int nconns = atoi(argv[6]);
    if (nconns < 1 || nconns > MAX_CONNS || rate <= 0 || seconds <= 0) { fprintf(stderr, "bad arguments\n"); return 2; }

    char request[512];
    int reqlen = snprintf(request, sizeof request, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", argv[3]);

    static conn_t conns[MAX_CONNS];
    int ep = epoll_create1(0);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = connect_to(host, port);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }

    uint64_t total = (uint64_t)(rate * seconds);
    uint64_t *lat = calloc(total, sizeof *lat);
    uint64_t interval = (uint64_t)(1e9 / rate);
    uint64_t *queue = calloc(total, sizeof *queue);  // intended times of requests not yet sent
    size_t qhead = 0, qtail = 0;
    uint64_t scheduled = 0, done = 0, errors = 0;
    uint64_t start = now_ns();
    int next_conn = 0;

    while (done + errors < total) {
        uint64_t t = now_ns();
        while (scheduled < total && start + scheduled * interval <= t) queue[qtail++] = start + (scheduled++) * interval;
        // Send queued requests on idle connections.
        for (int tries = 0; tries < nconns && qhead < qtail; tries++) {
            conn_t *c = &conns[next_conn];
            next_conn = (next_conn + 1) % nconns;
            if (c->busy) continue;
            if (write(c->fd, request, reqlen) != reqlen) { errors++; qhead++; continue; }
            c->busy = 1;
            c->intended_ns = queue[qhead++];
        }
        uint64_t next_due = scheduled < total ? start + scheduled * interval : t + 1000000;
        int timeout_ms = next_due > t ? (int)((next_due - t) / 1000000) : 0;
        struct epoll_event events[64];
        int n = epoll_wait(ep, events, 64, timeout_ms);
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[events[i].data.u32];
            ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
            if (r <= 0) { fprintf(stderr, "connection closed by server\n"); return 3; }
            c->len += (size_t)r;
            size_t used;
            while ((used = complete_response(c->buf, c->len)) > 0) {
                uint64_t finished = now_ns();
                if (strncmp(c->buf, "HTTP/1.1 200", 12) == 0) lat[done++] = finished - c->intended_ns;
                else errors++;
                memmove(c->buf, c->buf + used, c->len - used);
                c->len -= used;
                c->busy = 0;
            }
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    qsort(lat, done, sizeof *lat, cmp_u64);
#define PCT(p) (done ? lat[(size_t)((double)(done - 1) * (p))] / 1000 : 0)
    printf("requests=%llu errors=%llu p50_us=%llu p90_us=%llu p99_us=%llu p999_us=%llu max_us=%llu achieved_rps=%.0f\n",
           (unsigned long long)done, (unsigned long long)errors, (unsigned long long)PCT(0.50), (unsigned long long)PCT(0.90),
           (unsigned long long)PCT(0.99), (unsigned long long)PCT(0.999), (unsigned long long)(done ? lat[done - 1] / 1000 : 0),
           (double)done / elapsed);
    return errors ? 1 : 0;
}
