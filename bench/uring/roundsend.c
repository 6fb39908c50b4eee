/* One round of writes (the same frame to N sockets), four ways, for
 * bench/uring/bench.py. Loaded with ctypes, which releases the GIL for the
 * length of every call. Built on demand by bench.py (gcc, -luring); neither
 * the package nor CI needs liburing.
 *
 * Every *_round function takes the same arguments and fills res[i] for the
 * i-th socket: bytes the kernel took, -errno, RES_SKIPPED (the caller must
 * write this socket itself: its transport holds unsent bytes, so a direct
 * write would overtake them) or RES_PENDING (io_uring: not completed yet).
 * It returns how many sockets did not take the whole frame; the caller
 * scans res only when that is not 0.
 *
 * The receiver side (rx_run) lives here too, so that draining 1,000 sockets
 * costs the same, and little, in every phase.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RES_SKIPPED (-100000)
#define RES_PENDING (-100001)

/* ---- (2) a C loop of send(): one syscall per socket, no Python ---- */

static int send_range(const int *fds, int lo, int hi, const char *buf, int len,
                      const unsigned char *blocked, int *res) {
    int nshort = 0;
    for (int i = lo; i < hi; i++) {
        if (blocked[i]) {
            res[i] = RES_SKIPPED;
            nshort++;
            continue;
        }
        ssize_t r = send(fds[i], buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        res[i] = r < 0 ? -errno : (int)r;
        if (r != len) nshort++;
    }
    return nshort;
}

int c_send_round(const int *fds, int n, const char *buf, int len,
                 const unsigned char *blocked, int *res) {
    return send_range(fds, 0, n, buf, len, blocked, res);
}

/* ---- (4) the same split over threads: the caller sends the first share,
 * helper threads the others, all without the GIL. ---- */

#define MAX_THREADS 8

struct pool {
    int nthreads;
    pthread_t tid[MAX_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long generation; /* bumped once per round */
    int remaining;            /* helpers still sending this round */
    int stop;
    /* the current round */
    const int *fds;
    int n, len;
    const char *buf;
    const unsigned char *blocked;
    int *res;
    int nshort;
};

struct helper_arg { struct pool *p; int index; };
static struct helper_arg helper_args[MAX_THREADS];

static void share(struct pool *p, int index, int *lo, int *hi) {
    *lo = (int)((long)p->n * index / p->nthreads);
    *hi = (int)((long)p->n * (index + 1) / p->nthreads);
}

static void *helper_main(void *arg) {
    struct helper_arg *a = arg;
    struct pool *p = a->p;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->generation == seen && !p->stop) pthread_cond_wait(&p->go, &p->mu);
        if (p->stop) { pthread_mutex_unlock(&p->mu); return NULL; }
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        int lo, hi;
        share(p, a->index, &lo, &hi);
        int k = send_range(p->fds, lo, hi, p->buf, p->len, p->blocked, p->res);
        pthread_mutex_lock(&p->mu);
        p->nshort += k;
        if (--p->remaining == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

struct pool *tp_create(int nthreads) {
    if (nthreads < 1 || nthreads > MAX_THREADS) return NULL;
    struct pool *p = calloc(1, sizeof *p);
    p->nthreads = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < nthreads; i++) {
        helper_args[i].p = p;
        helper_args[i].index = i;
        pthread_create(&p->tid[i], NULL, helper_main, &helper_args[i]);
    }
    return p;
}

int tp_send_round(struct pool *p, const int *fds, int n, const char *buf, int len,
                  const unsigned char *blocked, int *res) {
    pthread_mutex_lock(&p->mu);
    p->fds = fds; p->n = n; p->buf = buf; p->len = len;
    p->blocked = blocked; p->res = res; p->nshort = 0;
    p->remaining = p->nthreads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    int lo, hi;
    share(p, 0, &lo, &hi);
    int k = send_range(fds, lo, hi, buf, len, blocked, res);
    pthread_mutex_lock(&p->mu);
    while (p->remaining > 0) pthread_cond_wait(&p->done, &p->mu);
    k += p->nshort;
    pthread_mutex_unlock(&p->mu);
    return k;
}

void tp_destroy(struct pool *p) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->nthreads; i++) pthread_join(p->tid[i], NULL);
    free(p);
}

/* ---- (3) io_uring: a round's sends as SQEs, one io_uring_enter ---- */

struct ur {
    struct io_uring ring;
    int n;
    int sqpoll;
    int inflight;
    unsigned char *pending; /* per socket: an SQE not yet completed */
    int *res;               /* where completions land (the round's res) */
    int len;
    int nshort;             /* shorts among completions reaped by ur_reap */
    int setup_flags;        /* what the ring was created with, for the report */
};

/* flags: bit 0 SQPOLL, bit 1 try COOP_TASKRUN|SINGLE_ISSUER|DEFER_TASKRUN.
 * Returns NULL and sets *err to -errno if the kernel refuses the ring. */
struct ur *ur_create(int entries, int flags, int sq_idle_ms, const int *fds, int n,
                     int efd, int *err) {
    struct ur *u = calloc(1, sizeof *u);
    struct io_uring_params p;
    int r = -EINVAL;
    u->sqpoll = flags & 1;
    if (u->sqpoll) {
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_SQPOLL;
        p.sq_thread_idle = sq_idle_ms;
        r = io_uring_queue_init_params(entries, &u->ring, &p);
    } else {
        if (flags & 2) {
            memset(&p, 0, sizeof p);
            p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
                      IORING_SETUP_DEFER_TASKRUN;
            r = io_uring_queue_init_params(entries, &u->ring, &p);
        }
        if (r < 0) {
            memset(&p, 0, sizeof p);
            r = io_uring_queue_init_params(entries, &u->ring, &p);
        }
    }
    if (r < 0) { *err = r; free(u); return NULL; }
    u->setup_flags = p.flags;
    /* Registered files: no fget/fput per send. */
    r = io_uring_register_files(&u->ring, fds, n);
    if (r < 0) { *err = r; io_uring_queue_exit(&u->ring); free(u); return NULL; }
    if (efd >= 0) {
        r = io_uring_register_eventfd(&u->ring, efd);
        if (r < 0) { *err = r; io_uring_queue_exit(&u->ring); free(u); return NULL; }
    }
    u->n = n;
    u->pending = calloc(n, 1);
    *err = 0;
    return u;
}

int ur_setup_flags(struct ur *u) { return u->setup_flags; }
int ur_inflight(struct ur *u) { return u->inflight; }

/* Take every completion that is there; returns how many. */
static int reap(struct ur *u) {
    struct io_uring_cqe *cqes[256];
    int total = 0;
    for (;;) {
        unsigned got = io_uring_peek_batch_cqe(&u->ring, cqes, 256);
        if (got == 0) break;
        for (unsigned k = 0; k < got; k++) {
            int i = (int)cqes[k]->user_data;
            int r = cqes[k]->res;
            u->res[i] = r;
            u->pending[i] = 0;
            if (r != u->len) u->nshort++;
        }
        io_uring_cq_advance(&u->ring, got);
        u->inflight -= got;
        total += got;
    }
    return total;
}

/* Queue one send per socket, submit them all (one io_uring_enter; none with
 * SQPOLL unless its thread sleeps), take the completions already there.
 * A socket with a send still in flight is skipped (RES_SKIPPED): its next
 * bytes must wait behind that one. */
int ur_send_round(struct ur *u, const int *fds, int n, const char *buf, int len,
                  const unsigned char *blocked, int *res) {
    (void)fds;
    int nskip = 0;
    u->res = res;
    u->len = len;
    u->nshort = 0;
    for (int i = 0; i < n; i++) {
        if (blocked[i] || u->pending[i]) {
            res[i] = RES_SKIPPED;
            nskip++;
            continue;
        }
        struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
        if (sqe == NULL) { /* ring smaller than a round: submit what we have */
            io_uring_submit(&u->ring);
            sqe = io_uring_get_sqe(&u->ring);
        }
        io_uring_prep_send(sqe, i, buf, len, MSG_NOSIGNAL);
        sqe->flags |= IOSQE_FIXED_FILE;
        sqe->user_data = (uint64_t)i;
        res[i] = RES_PENDING;
        u->pending[i] = 1;
        u->inflight++;
    }
    io_uring_submit(&u->ring);
    reap(u);
    /* Ones still in flight (SQPOLL) are the caller's to reap: ur_inflight. */
    return nskip + u->nshort;
}

/* Called from the event loop when the ring's eventfd is readable (or to wait
 * for a round with SQPOLL): take completions; wait_nr > 0 blocks for them.
 * Returns the shorts among what was taken; completions land in the res array
 * of the round that queued them. */
int ur_reap(struct ur *u, int wait_nr) {
    u->nshort = 0;
    if (wait_nr > 0 && u->inflight > 0) {
        struct io_uring_cqe *cqe;
        io_uring_wait_cqe_nr(&u->ring, &cqe, wait_nr < u->inflight ? wait_nr : u->inflight);
    } else if (!u->sqpoll && u->ring.flags & IORING_SETUP_DEFER_TASKRUN) {
        /* DEFER_TASKRUN posts completions only when we enter the kernel. */
        io_uring_get_events(&u->ring);
    }
    reap(u);
    return u->nshort;
}

void ur_destroy(struct ur *u) {
    io_uring_queue_exit(&u->ring);
    free(u->pending);
    free(u);
}

/* ---- the receiver: drain N sockets, timestamp every frame ---- */

/* A frame starts with: uint64 round start (CLOCK_MONOTONIC ns), uint32 phase,
 * uint32 round. Latency = arrival - round start, in HIST_STEP_NS buckets. */
#define HIST_STEP_NS 2000
#define HIST_BUCKETS 100000 /* 200 ms; the last bucket holds everything above */
#define END_PHASE 0xFFFFFFFFu

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t rusage_ns(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

/* hist: nphases * HIST_BUCKETS; frames, cpu_ns: nphases. cpu_ns[p] is this
 * process's CPU from the first frame of phase p to the first of a later
 * phase (phases are separated by idle gaps). Returns frames seen, or -errno. */
long rx_run(const int *fds, int n, int framelen, int nphases, uint32_t *hist,
            uint64_t *frames, uint64_t *cpu_ns) {
    int ep = epoll_create1(0);
    struct epoll_event ev, evs[1024];
    char *carry = calloc((size_t)n, framelen);
    int *have = calloc((size_t)n, sizeof(int));
    char buf[65536];
    long total = 0;
    int ended = 0;
    int64_t cur_phase = -1;
    uint64_t cpu_mark = 0;
    for (int i = 0; i < n; i++) {
        ev.events = EPOLLIN;
        ev.data.u32 = (uint32_t)i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) return -errno;
    }
    while (ended < n) {
        int k = epoll_wait(ep, evs, 1024, -1);
        if (k < 0) { if (errno == EINTR) continue; return -errno; }
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u32;
            ssize_t r = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                ended++;
                continue;
            }
            uint64_t t = now_ns();
            char *p = buf, *end = buf + r;
            char *c = carry + (size_t)i * framelen;
            while (p < end) {
                int take = framelen - have[i];
                if (take > end - p) take = (int)(end - p);
                memcpy(c + have[i], p, take);
                have[i] += take;
                p += take;
                if (have[i] < framelen) break;
                have[i] = 0;
                uint64_t stamp;
                uint32_t phase;
                memcpy(&stamp, c, 8);
                memcpy(&phase, c + 8, 4);
                if (phase == END_PHASE) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                    ended++;
                    break;
                }
                if (phase >= (uint32_t)nphases) continue;
                if ((int64_t)phase > cur_phase) {
                    uint64_t cpu = rusage_ns();
                    if (cur_phase >= 0) cpu_ns[cur_phase] = cpu - cpu_mark;
                    cpu_mark = cpu;
                    cur_phase = phase;
                }
                uint64_t lat = t > stamp ? (t - stamp) / HIST_STEP_NS : 0;
                if (lat >= HIST_BUCKETS) lat = HIST_BUCKETS - 1;
                hist[(size_t)phase * HIST_BUCKETS + lat]++;
                frames[phase]++;
                total++;
            }
        }
    }
    if (cur_phase >= 0) cpu_ns[cur_phase] = rusage_ns() - cpu_mark;
    close(ep);
    free(carry);
    free(have);
    return total;
}

int rx_hist_buckets(void) { return HIST_BUCKETS; }
int rx_hist_step_ns(void) { return HIST_STEP_NS; }
