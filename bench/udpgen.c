/*
 * udpgen - wgrelay's loopback UDP load generator and round-trip probe.
 *
 * One single-threaded process plays both peers of a relayed session:
 *   peer A  the "tx" socket: prepends a static header to every payload and
 *           sends it to --dst (the relay, or its own B socket for the direct
 *           path);
 *   peer B  the "rx" socket: receives, strips --rx-hdr-len bytes, checks the
 *           payload.
 * It is one thread so that `taskset -c 0` gives the generator exactly one core
 * and leaves the other to the relay under test.
 *
 * Modes
 *   tput  closed loop: at most --window packets are in flight (sent by A, not
 *         yet received by B).  A socket buffer can then never overflow, so the
 *         rate counted at B is a zero-loss forwarding rate.  sendmmsg/recvmmsg
 *         move --batch packets per system call, which keeps the generator's
 *         own cost per packet far below a Python relay's.
 *   lat   one probe in flight: A -> relay -> B, B echoes it (with --echo-hdr)
 *         to the address it came from -> relay -> A.  Reports p50/p90/p99 in
 *         microseconds.  --echo-cpu N runs B in a second thread pinned to CPU
 *         N (the direct path: without it A and B would hand packets over
 *         inside one thread and never pay for a cross-CPU wake-up, which every
 *         relay hop does).
 *
 * Sockets are either its own (bound to 127.0.0.1) or inherited (--tx-fd,
 * --rx-fd) from a wrapper that did the relay's control plane on them: the
 * relay only forwards data from the registered source addresses.
 *
 * Safety: every destination must be in 127.0.0.0/8 (--dst, and the source of
 * any packet B echoes).  Each run is bounded in time (--duration <= 10 s,
 * 200 ms receive timeout per probe).
 *
 * Output: one JSON object on stdout.  Besides the rates it reports the busy %
 * of every CPU over the measured window (/proc/stat, softirq included), its
 * own CPU use, and with --watch-pid the CPU use of the relay process, so a
 * reader can tell which side was the bottleneck.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define MAX_HDR 64
#define BUF_LEN 2048 /* > any header + 1500-byte payload */
#define MAX_CPUS 64
#define SOCK_BUF_BYTES (4 << 20)
#define MAX_DURATION_S 10.0
#define PROBE_TIMEOUT_US 200000
#define SEQ_LEN 8 /* every payload starts with a u64 sequence number */

struct config {
    const char *mode;
    struct sockaddr_in dst;
    int dst_self;
    int tx_fd, rx_fd;
    int size;
    double duration_s, warmup_s, stall_ms;
    int window, batch;
    int count, warm_count, gap_us;
    int echo_cpu; /* -1: B runs inline in the main thread */
    pid_t watch_pid;
    uint8_t tx_hdr[MAX_HDR], echo_hdr[MAX_HDR];
    int tx_hdr_len, rx_hdr_len, echo_hdr_len, back_hdr_len;
};

static void fail(const char *what) {
    perror(what);
    exit(2);
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------ addresses */

static int is_loopback(const struct sockaddr_in *a) {
    return a->sin_family == AF_INET && (ntohl(a->sin_addr.s_addr) >> 24) == 127;
}

/* "127.x.y.z:port"; anything outside 127.0.0.0/8 ends the program */
static void parse_dst(const char *text, struct sockaddr_in *out) {
    char host[INET_ADDRSTRLEN];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || (size_t)(colon - text) >= sizeof host) {
        fprintf(stderr, "udpgen: --dst %s is not IPV4:PORT\n", text);
        exit(1);
    }
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    long port = strtol(colon + 1, NULL, 10);
    if (port < 1 || port > 65535 || inet_pton(AF_INET, host, &out->sin_addr) != 1) {
        fprintf(stderr, "udpgen: --dst %s is not IPV4:PORT\n", text);
        exit(1);
    }
    out->sin_port = htons((uint16_t)port);
    if (!is_loopback(out)) {
        fprintf(stderr, "udpgen: refusing %s: only 127.0.0.0/8 is allowed\n", text);
        exit(1);
    }
}

static int parse_hex(const char *text, uint8_t *out) {
    size_t len = strlen(text);
    if (len % 2 != 0 || len / 2 > MAX_HDR) {
        fprintf(stderr, "udpgen: bad hex header %s (even length, at most %d bytes)\n", text, MAX_HDR);
        exit(1);
    }
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        if (sscanf(text + 2 * i, "%2x", &v) != 1) {
            fprintf(stderr, "udpgen: bad hex header %s\n", text);
            exit(1);
        }
        out[i] = (uint8_t)v;
    }
    return (int)(len / 2);
}

static void tune_socket(int fd, int nonblocking) {
    int sz = SOCK_BUF_BYTES;
    /* best effort: capped at net.core.[rw]mem_max; the closed-loop window is
       sized so that even the default buffer holds it */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, nonblocking ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) < 0)
        fail("fcntl");
}

static int own_socket(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) fail("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) fail("bind");
    return fd;
}

/* ------------------------------------------------------------ CPU accounting */

struct cpu_sample {
    int ncpu;
    unsigned long long busy[MAX_CPUS], total[MAX_CPUS];
    double self_s;       /* this process: user + system, all threads */
    long long watch_ticks; /* --watch-pid: utime + stime in clock ticks, -1 if unknown */
    double at;
};

static long long proc_ticks(pid_t pid) {
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    if (ok == NULL) return -1;
    /* the command name may contain spaces: fields count from the last ')' */
    char *p = strrchr(line, ')');
    if (p == NULL) return -1;
    unsigned long long utime = 0, stime = 0;
    /* after ")": state(3) ... utime is field 14, stime field 15 */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (long long)(utime + stime);
}

static void sample_cpu(struct cpu_sample *s, pid_t watch) {
    s->ncpu = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f != NULL) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            int id;
            unsigned long long v[8] = {0};
            if (strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9') continue;
            if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &id, &v[0], &v[1],
                       &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 9 || id < 0 || id >= MAX_CPUS)
                continue;
            unsigned long long total = 0;
            for (int i = 0; i < 8; i++) total += v[i];
            s->total[id] = total;
            s->busy[id] = total - v[3] - v[4]; /* idle and iowait are not busy */
            if (id + 1 > s->ncpu) s->ncpu = id + 1;
        }
        fclose(f);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s->self_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
    s->watch_ticks = watch > 0 ? proc_ticks(watch) : -1;
    s->at = mono_s();
}

static void print_cpu(const struct cpu_sample *a, const struct cpu_sample *b) {
    double el = b->at - a->at;
    printf(",\"cpu_busy_pct\":[");
    for (int i = 0; i < b->ncpu; i++) {
        unsigned long long dt = b->total[i] - a->total[i], db = b->busy[i] - a->busy[i];
        printf("%s%.1f", i ? "," : "", dt ? 100.0 * (double)db / (double)dt : 0.0);
    }
    printf("],\"gen_cpu_pct\":%.1f", el > 0 ? 100.0 * (b->self_s - a->self_s) / el : 0.0);
    if (a->watch_ticks >= 0 && b->watch_ticks >= 0 && el > 0)
        printf(",\"watch_cpu_pct\":%.1f",
               100.0 * (double)(b->watch_ticks - a->watch_ticks) / (double)sysconf(_SC_CLK_TCK) / el);
    else
        printf(",\"watch_cpu_pct\":null");
}

/* ------------------------------------------------------------ throughput */

static int run_tput(const struct config *c, int tx, int rx) {
    static uint8_t txbuf[MAX_BATCH][BUF_LEN], rxbuf[MAX_BATCH][BUF_LEN];
    static struct mmsghdr smsg[MAX_BATCH], rmsg[MAX_BATCH];
    static struct iovec siov[MAX_BATCH], riov[MAX_BATCH];
    const int txlen = c->tx_hdr_len + c->size, rxlen = c->rx_hdr_len + c->size;
    struct sockaddr_in dst = c->dst;

    for (int i = 0; i < MAX_BATCH; i++) {
        memset(txbuf[i], 0x5a, BUF_LEN);
        memcpy(txbuf[i], c->tx_hdr, (size_t)c->tx_hdr_len);
        siov[i] = (struct iovec){.iov_base = txbuf[i], .iov_len = (size_t)txlen};
        smsg[i].msg_hdr = (struct msghdr){
            .msg_name = &dst, .msg_namelen = sizeof dst, .msg_iov = &siov[i], .msg_iovlen = 1};
        riov[i] = (struct iovec){.iov_base = rxbuf[i], .iov_len = BUF_LEN};
        rmsg[i].msg_hdr = (struct msghdr){.msg_iov = &riov[i], .msg_iovlen = 1};
    }
    tune_socket(tx, 1);
    tune_socket(rx, 1);

    uint64_t sent = 0, recvd = 0, written_off = 0, stalls = 0, send_errors = 0;
    uint64_t bad_len = 0, bad_seq = 0, control = 0;
    uint64_t sent_at_start = 0, recvd_at_start = 0, recvd_at_end = 0;
    struct cpu_sample cpu0, cpu1;
    double t = mono_s(), last_progress = t;
    double measure_from = t + c->warmup_s, measure_until = measure_from + c->duration_s;
    int measuring = 0;
    sample_cpu(&cpu0, c->watch_pid);

    for (;;) {
        t = mono_s();
        if (!measuring && t >= measure_from) {
            measuring = 1;
            sent_at_start = sent;
            recvd_at_start = recvd;
            measure_from = t;
            measure_until = t + c->duration_s;
            sample_cpu(&cpu0, c->watch_pid);
        }
        if (measuring && t >= measure_until) {
            sample_cpu(&cpu1, c->watch_pid);
            recvd_at_end = recvd;
            break;
        }
        int progress = 0;
        int64_t in_flight = (int64_t)(sent - recvd - written_off);
        int want = c->window - (int)in_flight;
        if (want > c->batch) want = c->batch;
        if (want > 0) {
            for (int i = 0; i < want; i++) {
                uint64_t seq = sent + (uint64_t)i;
                memcpy(txbuf[i] + c->tx_hdr_len, &seq, SEQ_LEN);
            }
            int n = sendmmsg(tx, smsg, (unsigned)want, 0);
            if (n > 0) {
                sent += (uint64_t)n;
                progress = 1;
            } else if (errno == EAGAIN || errno == ENOBUFS || errno == ECONNREFUSED) {
                send_errors++;
            } else {
                fail("sendmmsg");
            }
        }
        int r = recvmmsg(rx, rmsg, MAX_BATCH, MSG_DONTWAIT, NULL);
        if (r > 0) {
            int frames = r;
            for (int i = 0; i < r; i++) {
                uint64_t seq;
                if (c->rx_hdr_len > 0 && rmsg[i].msg_len > 0 && rxbuf[i][0] != c->tx_hdr[0]) {
                    /* not a data frame: the relay's own message to the peer
                       whose socket we hold (a receipt request, say) */
                    control++;
                    frames--;
                    continue;
                }
                if ((int)rmsg[i].msg_len != rxlen) {
                    bad_len++;
                    continue;
                }
                memcpy(&seq, rxbuf[i] + c->rx_hdr_len, SEQ_LEN);
                if (seq >= sent) bad_seq++; /* header stripped wrong, or garbage */
            }
            recvd += (uint64_t)frames;
            progress = 1;
        } else if (r < 0 && errno != EAGAIN && errno != ECONNREFUSED) {
            fail("recvmmsg");
        }
        if (progress) {
            last_progress = t;
            continue;
        }
        /* window full and nothing back yet: sleep until B has something, but
           not forever - a packet the relay dropped would stall the window */
        struct pollfd p = {.fd = rx, .events = POLLIN};
        if (poll(&p, 1, 5) == 0 && mono_s() - last_progress > c->stall_ms / 1000.0) {
            in_flight = (int64_t)(sent - recvd - written_off);
            if (in_flight > 0) {
                written_off += (uint64_t)in_flight;
                stalls++;
            }
            last_progress = mono_s();
        }
    }
    /* collect the in-flight tail so it is not reported as loss */
    double drain_until = mono_s() + 0.2;
    while (recvd < sent && mono_s() < drain_until) {
        struct pollfd p = {.fd = rx, .events = POLLIN};
        if (poll(&p, 1, 20) > 0) {
            int r = recvmmsg(rx, rmsg, MAX_BATCH, MSG_DONTWAIT, NULL);
            if (r > 0) recvd += (uint64_t)r;
        }
    }
    double el = cpu1.at - cpu0.at;
    double pps = el > 0 ? (double)(recvd_at_end - recvd_at_start) / el : 0.0;
    uint64_t lost = sent > recvd ? sent - recvd : 0;
    printf("{\"mode\":\"tput\",\"size\":%d,\"tx_hdr_len\":%d,\"rx_hdr_len\":%d,\"window\":%d,"
           "\"batch\":%d,\"elapsed_s\":%.3f,\"sent\":%llu,\"recv\":%llu,\"lost\":%llu,"
           "\"stalls\":%llu,\"send_errors\":%llu,\"bad_len\":%llu,\"bad_seq\":%llu,\"control\":%llu,"
           "\"offered_pps\":%.0f,\"pps\":%.0f,\"mbps\":%.2f,\"wire_mbps\":%.2f",
           c->size, c->tx_hdr_len, c->rx_hdr_len, c->window, c->batch, el,
           (unsigned long long)sent, (unsigned long long)recvd, (unsigned long long)lost,
           (unsigned long long)stalls, (unsigned long long)send_errors,
           (unsigned long long)bad_len, (unsigned long long)bad_seq, (unsigned long long)control,
           el > 0 ? (double)(sent - sent_at_start) / el : 0.0, pps, pps * c->size * 8 / 1e6,
           pps * rxlen * 8 / 1e6);
    print_cpu(&cpu0, &cpu1);
    printf("}\n");
    return bad_len || bad_seq ? 3 : 0;
}

/* ------------------------------------------------------------ round trip */

/* B: strip the relay header, put the echo header on, send back to the sender */
static int echo_once(const struct config *c, int rx, uint8_t *in, uint8_t *out) {
    struct sockaddr_in from;
    socklen_t fromlen = sizeof from;
    ssize_t n = recvfrom(rx, in, BUF_LEN, 0, (struct sockaddr *)&from, &fromlen);
    if (n < c->rx_hdr_len) return -1;
    if (!is_loopback(&from)) {
        fprintf(stderr, "udpgen: not echoing to a non-loopback source\n");
        exit(1);
    }
    size_t payload = (size_t)n - (size_t)c->rx_hdr_len;
    memcpy(out, c->echo_hdr, (size_t)c->echo_hdr_len);
    memcpy(out + c->echo_hdr_len, in + c->rx_hdr_len, payload);
    if (sendto(rx, out, (size_t)c->echo_hdr_len + payload, 0, (struct sockaddr *)&from, fromlen) < 0)
        fail("sendto (echo)");
    return 0;
}

struct echo_thread {
    const struct config *c;
    int rx;
    volatile int stop;
};

static void *echo_main(void *arg) {
    struct echo_thread *e = arg;
    static uint8_t in[BUF_LEN], out[BUF_LEN + MAX_HDR];
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(e->c->echo_cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    while (!e->stop) echo_once(e->c, e->rx, in, out); /* wakes at least every 200 ms */
    return NULL;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(const uint64_t *v, int n, double p) {
    return n ? (double)v[(int)(p * (n - 1) + 0.5)] / 1000.0 : -1.0;
}

static int run_lat(const struct config *c, int tx, int rx) {
    static uint8_t sbuf[BUF_LEN], rbuf[BUF_LEN], ebuf[BUF_LEN + MAX_HDR];
    const int total = c->warm_count + c->count;
    uint64_t *rtt = calloc((size_t)c->count, sizeof *rtt);
    if (rtt == NULL) fail("calloc");
    memset(sbuf, 0x5a, sizeof sbuf);
    memcpy(sbuf, c->tx_hdr, (size_t)c->tx_hdr_len);
    tune_socket(tx, 0);
    tune_socket(rx, 0);
    struct timeval tv = {.tv_sec = 0, .tv_usec = PROBE_TIMEOUT_US};
    setsockopt(tx, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(rx, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    struct echo_thread et = {.c = c, .rx = rx, .stop = 0};
    pthread_t tid;
    if (c->echo_cpu >= 0 && pthread_create(&tid, NULL, echo_main, &et) != 0) fail("pthread_create");

    int got = 0, lost = 0, bad = 0;
    for (int i = 0; i < total; i++) {
        uint64_t seq = (uint64_t)i;
        memcpy(sbuf + c->tx_hdr_len, &seq, SEQ_LEN);
        uint64_t t0 = mono_ns();
        if (sendto(tx, sbuf, (size_t)(c->tx_hdr_len + c->size), 0, (const struct sockaddr *)&c->dst,
                   sizeof c->dst) < 0)
            fail("sendto");
        if (c->echo_cpu < 0 && echo_once(c, rx, rbuf, ebuf) < 0) {
            if (++lost > c->count / 10 + 10) break; /* the path is broken: stop, bounded */
            continue;
        }
        ssize_t n;
        for (;;) { /* skip a late echo of an earlier, timed-out probe */
            n = recv(tx, rbuf, BUF_LEN, 0);
            if (n < 0) break;
            uint64_t back;
            if (n < c->back_hdr_len + SEQ_LEN) continue;
            memcpy(&back, rbuf + c->back_hdr_len, SEQ_LEN);
            if (back == seq) break;
        }
        uint64_t t1 = mono_ns();
        if (n < 0) {
            if (++lost > c->count / 10 + 10) break; /* the path is broken: stop, bounded */
            continue;
        }
        if (n != c->back_hdr_len + c->size) bad++;
        if (i >= c->warm_count && got < c->count) rtt[got++] = t1 - t0;
        if (c->gap_us > 0) {
            struct timespec gap = {.tv_sec = c->gap_us / 1000000, .tv_nsec = (c->gap_us % 1000000) * 1000L};
            nanosleep(&gap, NULL);
        }
    }
    if (c->echo_cpu >= 0) {
        et.stop = 1;
        pthread_join(tid, NULL);
    }
    qsort(rtt, (size_t)got, sizeof *rtt, cmp_u64);
    double sum = 0;
    for (int i = 0; i < got; i++) sum += (double)rtt[i];
    printf("{\"mode\":\"lat\",\"size\":%d,\"count\":%d,\"lost\":%d,\"bad_len\":%d,\"gap_us\":%d,"
           "\"min_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
           "\"mean_us\":%.1f}\n",
           c->size, got, lost, bad, c->gap_us, pct_us(rtt, got, 0), pct_us(rtt, got, 0.5),
           pct_us(rtt, got, 0.9), pct_us(rtt, got, 0.99), pct_us(rtt, got, 1.0),
           got ? sum / got / 1000.0 : -1.0);
    free(rtt);
    return lost > c->count / 10 ? 4 : 0;
}

/* ------------------------------------------------------------ main */

static void usage(void) {
    fprintf(stderr,
            "usage: udpgen tput|lat --dst 127.x.y.z:PORT|self [options]\n"
            "  --size N          payload bytes (16..1500, default 64)\n"
            "  --tx-fd N --rx-fd N   inherited sockets of peers A and B (default: own)\n"
            "  --tx-hdr HEX      header A puts before each payload\n"
            "  --rx-hdr-len N    header length B strips\n"
            "  --echo-hdr HEX    header B puts before an echoed payload (lat)\n"
            "  --back-hdr-len N  header length A strips from the echo (lat)\n"
            "  tput: --duration S (<=10, default 3) --warmup S (0.5) --window W (64)\n"
            "        --batch B (32, <=256) --stall-ms MS (50) --watch-pid PID\n"
            "  lat:  --count N (2000) --warm-count N (100) --gap-us US (200) --echo-cpu CPU\n");
    exit(1);
}

int main(int argc, char **argv) {
    struct config c = {
        .size = 64, .duration_s = 3, .warmup_s = 0.5, .stall_ms = 50, .window = 64,
        .batch = 32, .count = 2000, .warm_count = 100, .gap_us = 200, .echo_cpu = -1,
        .tx_fd = -1, .rx_fd = -1,
    };
    int have_dst = 0;
    if (argc < 2) usage();
    c.mode = argv[1];
    for (int i = 2; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) usage();
        if (!strcmp(k, "--dst")) {
            have_dst = 1;
            if (!strcmp(v, "self")) c.dst_self = 1;
            else parse_dst(v, &c.dst);
        } else if (!strcmp(k, "--size")) c.size = atoi(v);
        else if (!strcmp(k, "--tx-fd")) c.tx_fd = atoi(v);
        else if (!strcmp(k, "--rx-fd")) c.rx_fd = atoi(v);
        else if (!strcmp(k, "--tx-hdr")) c.tx_hdr_len = parse_hex(v, c.tx_hdr);
        else if (!strcmp(k, "--echo-hdr")) c.echo_hdr_len = parse_hex(v, c.echo_hdr);
        else if (!strcmp(k, "--rx-hdr-len")) c.rx_hdr_len = atoi(v);
        else if (!strcmp(k, "--back-hdr-len")) c.back_hdr_len = atoi(v);
        else if (!strcmp(k, "--duration")) c.duration_s = atof(v);
        else if (!strcmp(k, "--warmup")) c.warmup_s = atof(v);
        else if (!strcmp(k, "--window")) c.window = atoi(v);
        else if (!strcmp(k, "--batch")) c.batch = atoi(v);
        else if (!strcmp(k, "--stall-ms")) c.stall_ms = atof(v);
        else if (!strcmp(k, "--watch-pid")) c.watch_pid = (pid_t)atoi(v);
        else if (!strcmp(k, "--count")) c.count = atoi(v);
        else if (!strcmp(k, "--warm-count")) c.warm_count = atoi(v);
        else if (!strcmp(k, "--gap-us")) c.gap_us = atoi(v);
        else if (!strcmp(k, "--echo-cpu")) c.echo_cpu = atoi(v);
        else usage();
    }
    if (!have_dst || c.size < 16 || c.size > 1500 || c.batch < 1 || c.batch > MAX_BATCH ||
        c.window < 1 || c.count < 1 || c.warm_count < 0 || c.rx_hdr_len < 0 ||
        c.rx_hdr_len > MAX_HDR || c.back_hdr_len < 0 || c.back_hdr_len > MAX_HDR ||
        c.echo_cpu >= CPU_SETSIZE || c.duration_s <= 0)
        usage();
    if (c.duration_s > MAX_DURATION_S) c.duration_s = MAX_DURATION_S; /* every run is bounded */
    if (c.size < SEQ_LEN) usage();

    int tx = c.tx_fd >= 0 ? c.tx_fd : own_socket();
    int rx = c.rx_fd >= 0 ? c.rx_fd : own_socket();
    if (c.dst_self) { /* the direct path: A sends straight to B */
        socklen_t len = sizeof c.dst;
        if (getsockname(rx, (struct sockaddr *)&c.dst, &len) < 0) fail("getsockname");
        if (!is_loopback(&c.dst)) {
            fprintf(stderr, "udpgen: B's socket is not on 127.0.0.0/8\n");
            return 1;
        }
    }
    if (!strcmp(c.mode, "tput")) return run_tput(&c, tx, rx);
    if (!strcmp(c.mode, "lat")) return run_lat(&c, tx, rx);
    usage();
    return 1;
}
