// FUSE over io_uring (Linux 6.14+, fs/fuse/dev_uring.c) beneath libfuse 3.14, which predates it.
//
// Why: on /dev/fuse every request is a read(2) by whichever daemon thread the kernel wakes, usually on the other
// CPU, and a writev(2) back: two system calls and a cross-CPU wake-up each way. With io_uring the kernel keeps one
// queue per CPU; a request goes to the queue of the CPU its caller runs on, and that queue's thread (pinned there)
// gets it as a completion and hands the answer back in the same io_uring_enter that waits for the next one.
//
// How it fits under libfuse: each ring entry is a header buffer (fuse_in_header, the op's own header, ring
// bookkeeping) and a payload buffer. The payload buffer sits PREFIX bytes into a larger allocation, so the two
// headers are copied in front of it and libfuse gets one contiguous request, as if read from /dev/fuse, without
// moving the payload (a WRITE's data). libfuse's reply reaches the custom-I/O writev hook on the same thread,
// which copies it into the entry and queues the COMMIT_AND_FETCH that answers and re-arms the entry.
//
// Each queue's thread polls briefly for the next request before it sleeps (ring_wait), and hands READs of 256 KiB
// and more to unpinned bulk workers (entry_serve), whose replies come back to it through its done list.
//
// What stays on /dev/fuse (libfuse's own loop keeps serving it): INIT, every request before all queues are
// registered, FORGET, INTERRUPT and notifications. Any failure to set up leaves the mount on /dev/fuse.
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312
#include "CFuseWire.h"
#include "wire_internal.h"
#include <fuse3/fuse_lowlevel.h>
#include <linux/fuse.h>
#include <linux/io_uring.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// The kernel's io_uring ABI for FUSE (include/uapi/linux/fuse.h, protocol 7.42); <linux/fuse.h> here is older.
enum { URING_CMD_REGISTER = 1, URING_CMD_COMMIT_AND_FETCH = 2 };

struct uring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id;   // the request's unique; echoed in COMMIT_AND_FETCH
    uint32_t payload_sz;  // bytes of payload: the kernel's in a request, ours in a reply
    uint32_t padding;
    uint64_t reserved;
};

struct uring_req_header {
    char in_out[128];     // fuse_in_header of a request, fuse_out_header of a reply
    char op_in[128];      // the op's own header (fuse_write_in, ...), empty for some ops
    struct uring_ent_in_out ring_ent_in_out;
};

struct uring_cmd_req {    // the 80-byte command area of a 128-byte SQE
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

_Static_assert(sizeof(struct uring_req_header) == 288, "kernel ABI");
_Static_assert(sizeof(struct uring_cmd_req) <= 80, "kernel ABI");

// Room in front of each payload for fuse_in_header and the largest op header; a page keeps the payload aligned.
#define PREFIX 4096
#define SQE_SIZE 128
#define TEARDOWN_TAG 0  // user_data of the eventfd poll; entries are non-null pointers
#define WAKE_TAG 1      // user_data of the READ of the queue's wake_fd (entries are aligned, never 1)
// A READ this large goes to a bulk worker (see entry_serve).
#define BULK_MIN_READ (256 * 1024)

struct ring_entry {
    struct uring_queue *queue;
    struct uring_req_header *header;
    char *allocation;          // PREFIX + payload
    size_t allocation_size;
    struct iovec iov[2];
    uint64_t commit_id;
    uint64_t unique;
    int replied;
    int last_command;
    int bulk;                  // being served by a bulk worker, which hands the reply back through `done`
    char *body;                // the reassembled request (fuse_in_header, op header, payload)
    size_t body_length;
    struct ring_entry *next;   // in the bulk queue, then in the queue's done list
};

struct uring_queue {
    struct uring_pool *pool;
    int qid;
    pthread_t thread;
    int thread_started;
    int ring_fd;
    void *sq_map, *cq_map;
    size_t sq_map_size, cq_map_size;
    char *sqes;
    size_t sqes_size;
    unsigned sq_entries;
    _Atomic unsigned *sq_head, *sq_tail;
    unsigned *sq_mask, *sq_array;
    _Atomic unsigned *cq_head, *cq_tail;
    unsigned *cq_mask;
    struct io_uring_cqe *cqes;
    unsigned to_submit;
    struct ring_entry *entries;
    struct ring_entry *_Atomic done;  // replied by bulk workers; this thread sends their COMMIT_AND_FETCH
    int wake_fd;                      // eventfd the bulk workers write after adding to `done`
    uint64_t wake_count;              // the ring's READ of wake_fd lands here
};

struct uring_pool {
    struct fuse_session *session;
    int fuse_fd;
    int teardown_fd;           // eventfd polled by every queue
    size_t payload_size;
    unsigned queue_count;
    unsigned depth;
    unsigned long long poll_ns;   // how long a queue's thread polls for the next request before it sleeps
    struct uring_queue *queues;
    _Atomic unsigned registered;  // queues whose entries all went to the kernel, for the log line

    // Bulk workers: large READs are served off the ring thread (see entry_serve).
    unsigned bulk_count;
    pthread_t *bulk_threads;
    pthread_mutex_t bulk_lock;
    pthread_cond_t bulk_wake;
    int bulk_lock_ready;
    struct ring_entry *bulk_head, *bulk_tail;  // under bulk_lock
    unsigned bulk_sleepers;                   // under bulk_lock
    _Atomic unsigned bulk_pending;
    _Atomic int bulk_stop;
    int go;                      // under bulk_lock: 0 until INIT's reply is written, then 1 (or -1: not written)
    pthread_cond_t go_changed;
};

static _Atomic unsigned requested_depth;       // 0: /dev/fuse only
static _Atomic unsigned requested_poll_us;
static struct uring_pool *_Atomic running_pool;
static _Thread_local struct ring_entry *serving_entry;
static void (*logger)(int, const char *);

void cfusewire_set_logger(void (*log)(int level, const char *message)) { logger = log; }

static void say(int level, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void say(int level, const char *format, ...) {
    if (!logger) return;
    char message[256];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof(message), format, args);
    va_end(args);
    logger(level, message);
}

void cfusewire_uring_request(unsigned entries_per_queue, unsigned poll_microseconds) {
    atomic_store(&requested_poll_us, poll_microseconds);
    atomic_store(&requested_depth, entries_per_queue);
}

int cfusewire_uring_wanted(uint32_t kernel_flags2) {
    return atomic_load(&requested_depth) > 0 && (kernel_flags2 & CFUSEWIRE_FLAGS2_OVER_IO_URING) != 0;
}

// ---- a minimal io_uring (no liburing: one ring per queue thread, 128-byte SQEs) ----

static int ring_setup(struct uring_queue *q, unsigned entries) {
    struct io_uring_params params;
    memset(&params, 0, sizeof(params));
    // COOP_TASKRUN: completions wait for this thread's next entry into the kernel instead of interrupting it
    // (it alone submits to and reaps this ring, and enters the kernel at least every poll step).
    params.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN;
    params.cq_entries = entries * 2;
    int fd = (int)syscall(__NR_io_uring_setup, entries, &params);
    if (fd < 0) return -errno;
    q->ring_fd = fd;
    q->sq_entries = params.sq_entries;
    q->sq_map_size = params.sq_off.array + params.sq_entries * sizeof(unsigned);
    q->cq_map_size = params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe);
    int single = (params.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && q->cq_map_size > q->sq_map_size) q->sq_map_size = q->cq_map_size;
    q->sq_map = mmap(NULL, q->sq_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (q->sq_map == MAP_FAILED) { q->sq_map = NULL; return -errno; }
    if (single) {
        q->cq_map = q->sq_map;
    } else {
        q->cq_map = mmap(NULL, q->cq_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        if (q->cq_map == MAP_FAILED) { q->cq_map = NULL; return -errno; }
    }
    q->sqes_size = (size_t)params.sq_entries * SQE_SIZE;
    q->sqes = mmap(NULL, q->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (q->sqes == MAP_FAILED) { q->sqes = NULL; return -errno; }
    char *sq = q->sq_map, *cq = q->cq_map;
    q->sq_head = (_Atomic unsigned *)(sq + params.sq_off.head);
    q->sq_tail = (_Atomic unsigned *)(sq + params.sq_off.tail);
    q->sq_mask = (unsigned *)(sq + params.sq_off.ring_mask);
    q->sq_array = (unsigned *)(sq + params.sq_off.array);
    q->cq_head = (_Atomic unsigned *)(cq + params.cq_off.head);
    q->cq_tail = (_Atomic unsigned *)(cq + params.cq_off.tail);
    q->cq_mask = (unsigned *)(cq + params.cq_off.ring_mask);
    q->cqes = (struct io_uring_cqe *)(cq + params.cq_off.cqes);
    return 0;
}

static void ring_teardown(struct uring_queue *q) {
    if (q->sqes) munmap(q->sqes, q->sqes_size);
    if (q->cq_map && q->cq_map != q->sq_map) munmap(q->cq_map, q->cq_map_size);
    if (q->sq_map) munmap(q->sq_map, q->sq_map_size);
    if (q->ring_fd >= 0) close(q->ring_fd);
    q->sqes = NULL; q->cq_map = NULL; q->sq_map = NULL; q->ring_fd = -1;
}

// Only the queue's own thread touches its SQ tail and CQ head.
static struct io_uring_sqe *ring_next_sqe(struct uring_queue *q) {
    unsigned tail = atomic_load_explicit(q->sq_tail, memory_order_relaxed);
    unsigned head = atomic_load_explicit(q->sq_head, memory_order_acquire);
    if (tail - head >= q->sq_entries) return NULL;
    unsigned index = tail & *q->sq_mask;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)(q->sqes + (size_t)index * SQE_SIZE);
    memset(sqe, 0, SQE_SIZE);
    q->sq_array[index] = index;
    return sqe;
}

static void ring_push_sqe(struct uring_queue *q) {
    unsigned tail = atomic_load_explicit(q->sq_tail, memory_order_relaxed);
    atomic_store_explicit(q->sq_tail, tail + 1, memory_order_release);
    q->to_submit++;
}

// Submits what is queued and, with wait, waits for at least one completion.
static int ring_enter(struct uring_queue *q, int wait) {
    for (;;) {
        long n = syscall(__NR_io_uring_enter, q->ring_fd, q->to_submit, wait ? 1 : 0,
                         wait ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
        if (n >= 0) { q->to_submit -= (unsigned)n; return 0; }
        if (errno != EINTR) return -errno;
    }
}

static unsigned long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

// Submits what is queued (the replies), then waits for the next request: first by polling, yielding the CPU to
// whatever else may run there, for up to poll_ns; then asleep in the kernel.
//
// Why poll: a caller blocked on a request is woken when the reply lands, and the scheduler prefers an idle CPU for
// it. If this queue's thread went to sleep at once, the other CPU would be idle and the caller would move there for
// every request, a cross-CPU wake-up and a migration each time (untar of 47k files: 7 migrations per file, 40% of
// both CPUs idle waiting on wake-ups). A thread that polls keeps its CPU busy for a moment, the caller stays where
// it is, and the next request finds its queue's thread awake. The poll ends after poll_ns without a request, so an
// idle mount costs no CPU. sched_yield returns through the kernel, which runs io_uring's task work and so posts
// the completions this loop looks for.
static int ring_wait(struct uring_queue *q, unsigned long long poll_ns) {
    if (poll_ns == 0) return ring_enter(q, 1);
    int rc = ring_enter(q, 0);
    if (rc < 0) return rc;
    unsigned long long start = now_ns();
    do {
        if (atomic_load_explicit(q->cq_tail, memory_order_acquire) != atomic_load_explicit(q->cq_head, memory_order_relaxed)
            || atomic_load_explicit(&q->done, memory_order_relaxed) != NULL)
            return 0;
        sched_yield();
    } while (now_ns() - start < poll_ns);
    return ring_enter(q, 1);
}

// ---- FUSE ring entries ----

static int entry_command(struct uring_queue *q, struct ring_entry *e, int command) {
    struct io_uring_sqe *sqe = ring_next_sqe(q);
    if (!sqe) return -EBUSY;  // cannot happen: one SQE per entry, the poll and the wake read, and the ring holds them
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = q->pool->fuse_fd;
    sqe->cmd_op = (uint32_t)command;
    sqe->user_data = (uint64_t)(uintptr_t)e;
    struct uring_cmd_req *req = (struct uring_cmd_req *)sqe->cmd;
    req->qid = (uint16_t)q->qid;
    if (command == URING_CMD_REGISTER) {
        sqe->addr = (uint64_t)(uintptr_t)e->iov;
        sqe->len = 2;
    } else {
        req->commit_id = e->commit_id;
    }
    e->last_command = command;
    ring_push_sqe(q);
    return 0;
}

// The reply is in the entry: send it and re-arm the entry. Only the queue's thread submits to its ring, so a bulk
// worker's entry goes on the queue's done list instead, and the queue's thread is woken to send it.
static void entry_commit(struct ring_entry *e) {
    if (!e->bulk) { entry_command(e->queue, e, URING_CMD_COMMIT_AND_FETCH); return; }
    struct uring_queue *q = e->queue;
    struct ring_entry *head = atomic_load_explicit(&q->done, memory_order_relaxed);
    do { e->next = head; } while (!atomic_compare_exchange_weak_explicit(&q->done, &head, e, memory_order_release,
                                                                         memory_order_relaxed));
    uint64_t one = 1;
    if (write(q->wake_fd, &one, sizeof(one)) != sizeof(one)) say(3, "io_uring: cannot wake queue %d: %s", q->qid, strerror(errno));
}

static void entry_reply_error(struct ring_entry *e, int error) {
    struct fuse_out_header out = { .len = sizeof(struct fuse_out_header), .error = -error, .unique = e->unique };
    memcpy(e->header->in_out, &out, sizeof(out));
    e->header->ring_ent_in_out.payload_sz = 0;
    e->replied = 1;
    entry_commit(e);
}

void *cfusewire_reply_buffer(size_t size) {
    struct ring_entry *e = serving_entry;
    if (!e || e->replied || size > e->allocation_size - PREFIX) return NULL;
    return e->allocation + PREFIX;
}

ssize_t cfusewire_uring_reply(const struct iovec *iov, int count) {
    struct ring_entry *e = serving_entry;
    struct fuse_out_header out;
    if (!e || e->replied || count < 1 || iov[0].iov_len < sizeof(out)) { errno = ENOTSUP; return -1; }
    memcpy(&out, iov[0].iov_base, sizeof(out));
    if (out.unique != e->unique) { errno = ENOTSUP; return -1; }
    size_t capacity = e->allocation_size - PREFIX, length = 0;
    char *payload = e->allocation + PREFIX;
    for (int i = 1; i < count; i++) {
        if (iov[i].iov_len > capacity - length) {
            say(3, "io_uring: a reply of more than %zu bytes does not fit its ring entry (opcode reply %llu)",
                capacity, (unsigned long long)out.unique);
            entry_reply_error(e, EIO);
            errno = EINVAL;
            return -1;
        }
        if (iov[i].iov_base != payload + length) memcpy(payload + length, iov[i].iov_base, iov[i].iov_len);
        length += iov[i].iov_len;
    }
    out.len = (uint32_t)(sizeof(out) + length);
    memcpy(e->header->in_out, &out, sizeof(out));
    e->header->ring_ent_in_out.payload_sz = (uint32_t)length;
    e->replied = 1;
    entry_commit(e);
    return (ssize_t)out.len;
}

// Every transport thread: signals blocked (libfuse's loop takes SIGTERM/SIGINT; io_uring_enter never EINTRs), named.
static void thread_begin(const char *name) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setname_np(pthread_self(), name);
}

// Hands a reassembled request to libfuse's dispatcher on the calling thread (the queue's or a bulk worker).
static void entry_dispatch(struct uring_pool *pool, struct ring_entry *e) {
    cfusewire_note_request(e->body, (ssize_t)e->body_length);
    struct fuse_buf buf;
    memset(&buf, 0, sizeof(buf));
    buf.mem = e->body;
    buf.size = e->body_length;
    serving_entry = e;
    fuse_session_process_buf(pool->session, &buf);
    serving_entry = NULL;
    // Every request that comes over the ring expects an answer (FORGET and INTERRUPT stay on /dev/fuse).
    if (!e->replied) entry_reply_error(e, EIO);
}

static void bulk_push(struct uring_pool *pool, struct ring_entry *e) {
    pthread_mutex_lock(&pool->bulk_lock);
    e->next = NULL;
    if (pool->bulk_tail) pool->bulk_tail->next = e; else pool->bulk_head = e;
    pool->bulk_tail = e;
    atomic_fetch_add_explicit(&pool->bulk_pending, 1, memory_order_release);
    if (pool->bulk_sleepers) pthread_cond_signal(&pool->bulk_wake);
    pthread_mutex_unlock(&pool->bulk_lock);
}

// One request, reassembled in front of its payload, served on this thread or handed to a bulk worker.
//
// Why bulk workers: a reader's readahead arrives on the ring of the reader's CPU, and if this thread (pinned there)
// served it, the reader would wait for each 1 MiB to be read and decrypted before copying it, on the same CPU, one
// after the other. A bulk worker (not pinned) runs on another CPU meanwhile, so reading ahead and consuming
// overlap as they did over /dev/fuse, while the small requests that make up metadata work stay on this thread.
static void entry_serve(struct uring_pool *pool, struct ring_entry *e) {
    struct fuse_in_header in;
    memcpy(&in, e->header->in_out, sizeof(in));
    uint32_t payload = e->header->ring_ent_in_out.payload_sz;
    e->commit_id = e->header->ring_ent_in_out.commit_id;
    e->unique = in.unique;
    e->replied = 0;
    size_t fixed = sizeof(in);
    if (in.len < fixed || payload > in.len - fixed || in.len - fixed - payload > sizeof(e->header->op_in)
        || payload > e->allocation_size - PREFIX) {
        say(3, "io_uring: malformed request (opcode %u, length %u, payload %u)", in.opcode, in.len, payload);
        entry_reply_error(e, EIO);
        return;
    }
    size_t op_size = in.len - fixed - payload;
    char *body = e->allocation + PREFIX - op_size - fixed;
    memcpy(body, &in, fixed);
    memcpy(body + fixed, e->header->op_in, op_size);
    e->body = body;
    e->body_length = in.len;
    e->bulk = 0;
    if (pool->bulk_count > 0 && in.opcode == FUSE_READ && op_size >= sizeof(struct fuse_read_in)) {
        struct fuse_read_in read_in;
        memcpy(&read_in, e->header->op_in, sizeof(read_in));
        if (read_in.size >= BULK_MIN_READ) {
            e->bulk = 1;
            bulk_push(pool, e);
            return;
        }
    }
    entry_dispatch(pool, e);
}

static struct ring_entry *bulk_pop(struct uring_pool *pool) {
    // Poll first, as the queues do: the next 1 MiB of a stream follows within microseconds.
    unsigned long long start = now_ns();
    while (atomic_load_explicit(&pool->bulk_pending, memory_order_acquire) == 0 && !atomic_load(&pool->bulk_stop)
           && now_ns() - start < pool->poll_ns)
        sched_yield();
    pthread_mutex_lock(&pool->bulk_lock);
    while (!pool->bulk_head && !atomic_load(&pool->bulk_stop)) {
        pool->bulk_sleepers++;
        pthread_cond_wait(&pool->bulk_wake, &pool->bulk_lock);
        pool->bulk_sleepers--;
    }
    struct ring_entry *e = pool->bulk_head;
    if (e) {
        pool->bulk_head = e->next;
        if (!pool->bulk_head) pool->bulk_tail = NULL;
        atomic_fetch_sub_explicit(&pool->bulk_pending, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&pool->bulk_lock);
    return e;
}

static void *bulk_main(void *argument) {
    struct uring_pool *pool = argument;
    thread_begin("fuse-bulk");
    struct ring_entry *e;
    while ((e = bulk_pop(pool)) != NULL) entry_dispatch(pool, e);
    return NULL;
}

// Sends the replies the bulk workers finished.
static void queue_send_done(struct uring_queue *q) {
    struct ring_entry *e = atomic_exchange_explicit(&q->done, NULL, memory_order_acquire);
    while (e) {
        struct ring_entry *next = e->next;
        entry_command(q, e, URING_CMD_COMMIT_AND_FETCH);
        e = next;
    }
}

static void queue_read_wake(struct uring_queue *q) {
    struct io_uring_sqe *sqe = ring_next_sqe(q);
    if (!sqe) return;
    sqe->opcode = IORING_OP_READ;
    sqe->fd = q->wake_fd;
    sqe->addr = (uint64_t)(uintptr_t)&q->wake_count;
    sqe->len = sizeof(q->wake_count);
    sqe->user_data = WAKE_TAG;
    ring_push_sqe(q);
}

// The ring and the entries' buffers: everything that can fail for want of memory, done before INIT's reply.
static int queue_allocate(struct uring_pool *pool, struct uring_queue *q) {
    int rc = ring_setup(q, pool->depth + 2);  // one SQE per entry, the teardown poll, the wake read
    if (rc < 0) return rc;
    for (unsigned i = 0; i < pool->depth; i++) {
        struct ring_entry *e = &q->entries[i];
        e->queue = q;
        e->header = mmap(NULL, sizeof(struct uring_req_header), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        e->allocation_size = PREFIX + pool->payload_size;
        e->allocation = mmap(NULL, e->allocation_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (e->header == MAP_FAILED || e->allocation == MAP_FAILED) {
            if (e->header == MAP_FAILED) e->header = NULL;
            if (e->allocation == MAP_FAILED) e->allocation = NULL;
            return -ENOMEM;
        }
        // Requests and replies carry file contents in plaintext: keep them out of core dumps, as the key slots are.
        (void)madvise(e->header, sizeof(struct uring_req_header), MADV_DONTDUMP);
        (void)madvise(e->allocation, e->allocation_size, MADV_DONTDUMP);
        e->iov[0] = (struct iovec){ .iov_base = e->header, .iov_len = sizeof(struct uring_req_header) };
        e->iov[1] = (struct iovec){ .iov_base = e->allocation + PREFIX, .iov_len = pool->payload_size };
    }
    return 0;
}

// Queues the entries' REGISTER, the teardown poll and the wake read (submitted by the queue's thread).
static int queue_arm(struct uring_pool *pool, struct uring_queue *q) {
    for (unsigned i = 0; i < pool->depth; i++) {
        int rc = entry_command(q, &q->entries[i], URING_CMD_REGISTER);
        if (rc < 0) return rc;
    }
    struct io_uring_sqe *sqe = ring_next_sqe(q);
    if (!sqe) return -EBUSY;
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = pool->teardown_fd;
    sqe->poll32_events = POLLIN;
    sqe->user_data = TEARDOWN_TAG;
    ring_push_sqe(q);
    queue_read_wake(q);
    return 0;
}

static void *queue_main(void *argument) {
    struct uring_queue *q = argument;
    struct uring_pool *pool = q->pool;
    char name[16];
    snprintf(name, sizeof(name), "fuse-ring-%d", q->qid);
    thread_begin(name);
    cpu_set_t cpu;
    CPU_ZERO(&cpu);
    CPU_SET(q->qid, &cpu);
    // A queue serves the requests made on its CPU: its thread runs there, so a request never crosses CPUs.
    (void)sched_setaffinity(0, sizeof(cpu), &cpu);

    pthread_mutex_lock(&pool->bulk_lock);
    while (pool->go == 0) pthread_cond_wait(&pool->go_changed, &pool->bulk_lock);
    int go = pool->go;
    pthread_mutex_unlock(&pool->bulk_lock);
    if (go < 0) return NULL;  // the INIT reply did not reach the kernel

    int rc = queue_arm(pool, q);
    if (rc == 0) rc = ring_enter(q, 0);
    if (rc < 0) {
        say(3, "io_uring: queue %d could not start (%s); its requests stay on /dev/fuse", q->qid, strerror(-rc));
        return NULL;
    }
    // A refused REGISTER completes at once, within the submit above.
    unsigned head = atomic_load_explicit(q->cq_head, memory_order_relaxed);
    unsigned tail = atomic_load_explicit(q->cq_tail, memory_order_acquire);
    for (; head != tail; head++) {
        struct io_uring_cqe *cqe = &q->cqes[head & *q->cq_mask];
        if (cqe->user_data != TEARDOWN_TAG && cqe->user_data != WAKE_TAG && cqe->res < 0 && cqe->res != -EAGAIN && cqe->res != -EINTR) {
            say(3, "io_uring: queue %d: the kernel refused its ring entries (%s); requests stay on /dev/fuse",
                q->qid, strerror(-cqe->res));
            return NULL;
        }
    }
    if (atomic_fetch_add(&pool->registered, 1) + 1 == pool->queue_count)
        say(6, "serving FUSE requests over io_uring: %u queues of %u entries", pool->queue_count, pool->depth);

    for (;;) {
        queue_send_done(q);
        rc = ring_wait(q, pool->poll_ns);
        if (rc < 0) { say(3, "io_uring: queue %d: io_uring_enter failed (%s)", q->qid, strerror(-rc)); break; }
        unsigned head = atomic_load_explicit(q->cq_head, memory_order_relaxed);
        unsigned tail = atomic_load_explicit(q->cq_tail, memory_order_acquire);
        int stop = 0;
        for (; head != tail; head++) {
            struct io_uring_cqe cqe = q->cqes[head & *q->cq_mask];
            // Each completion is copied out first: serving it queues new SQEs, never new CQEs, but the slot is
            // given back below only after the whole batch.
            if (cqe.user_data == TEARDOWN_TAG) { stop = 1; continue; }
            if (cqe.user_data == WAKE_TAG) {
                // A bulk worker finished one (queue_send_done sends it); read the next wake-up.
                if (cqe.res >= 0 || cqe.res == -EAGAIN || cqe.res == -EINTR) queue_read_wake(q);
                else say(3, "io_uring: queue %d: reading its wake-ups failed (%s)", q->qid, strerror(-cqe.res));
                continue;
            }
            struct ring_entry *e = (struct ring_entry *)(uintptr_t)cqe.user_data;
            if (cqe.res == 0) {
                entry_serve(pool, e);
            } else if (cqe.res == -EAGAIN || cqe.res == -EINTR) {
                entry_command(q, e, e->last_command);
            } else if (cqe.res == -ENOTCONN || cqe.res == -ECONNABORTED || cqe.res == -ECANCELED) {
                stop = 1;  // unmounted or aborted
            } else if (e->last_command == URING_CMD_REGISTER) {
                // The kernel then keeps the whole connection on /dev/fuse.
                say(3, "io_uring: queue %d: the kernel refused a ring entry (%s); requests stay on /dev/fuse",
                    q->qid, strerror(-cqe.res));
            } else {
                // The kernel no longer knows the request (it was aborted): this entry is gone, the others serve on.
                say(3, "io_uring: queue %d: ring command %d failed (%s)", q->qid, e->last_command, strerror(-cqe.res));
            }
        }
        atomic_store_explicit(q->cq_head, head, memory_order_release);
        if (stop) break;
    }
    return NULL;
}

// ---- the pool: one queue per possible CPU (the kernel's nr_cpu_ids), set up before the INIT reply ----

static unsigned possible_cpus(void) {
    // "0-3" or "0,2-5": the kernel wants a queue for every CPU id up to the highest possible one.
    unsigned highest = 0;
    FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
    if (f) {
        char text[256];
        if (fgets(text, sizeof(text), f)) {
            for (char *p = text; *p;) {
                if (*p < '0' || *p > '9') { p++; continue; }  // '-' and ',' separate ids
                char *end;
                unsigned long v = strtoul(p, &end, 10);
                if (v > highest && v < 4096) highest = (unsigned)v;
                p = end;
            }
        }
        fclose(f);
        return highest + 1;
    }
    long n = sysconf(_SC_NPROCESSORS_CONF);
    return n > 0 ? (unsigned)n : 1;
}

static void pool_free(struct uring_pool *pool) {
    for (unsigned i = 0; i < pool->queue_count; i++) {
        struct uring_queue *q = &pool->queues[i];
        ring_teardown(q);
        for (unsigned j = 0; q->entries && j < pool->depth; j++) {
            struct ring_entry *e = &q->entries[j];
            if (e->header) munmap(e->header, sizeof(struct uring_req_header));
            if (e->allocation) munmap(e->allocation, e->allocation_size);
        }
        free(q->entries);
        if (q->wake_fd >= 0) close(q->wake_fd);
    }
    free(pool->queues);
    free(pool->bulk_threads);
    if (pool->bulk_lock_ready) {
        pthread_mutex_destroy(&pool->bulk_lock);
        pthread_cond_destroy(&pool->bulk_wake);
        pthread_cond_destroy(&pool->go_changed);
    }
    if (pool->teardown_fd >= 0) close(pool->teardown_fd);
    free(pool);
}

// Once the queue threads are told to end (teardown poll, or go = -1): waits for them, then ends the bulk workers
// (the queues hand them no more work) and frees everything.
static void pool_join_and_free(struct uring_pool *pool) {
    for (unsigned i = 0; i < pool->queue_count; i++)
        if (pool->queues[i].thread_started) pthread_join(pool->queues[i].thread, NULL);
    pthread_mutex_lock(&pool->bulk_lock);
    atomic_store(&pool->bulk_stop, 1);
    pthread_cond_broadcast(&pool->bulk_wake);
    pthread_mutex_unlock(&pool->bulk_lock);
    for (unsigned i = 0; i < pool->bulk_count; i++) pthread_join(pool->bulk_threads[i], NULL);
    atomic_store(&running_pool, NULL);
    pool_free(pool);
}

// Ends a pool whose queue threads wait for `go` (the INIT reply did not ask for io_uring or was not written).
static void pool_abandon(struct uring_pool *pool) {
    pthread_mutex_lock(&pool->bulk_lock);
    pool->go = -1;
    pthread_cond_broadcast(&pool->go_changed);
    pthread_mutex_unlock(&pool->bulk_lock);
    pool_join_and_free(pool);
}

// Everything that can fail happens here, before the INIT reply asks for io_uring: once it has, the kernel holds
// requests until every queue registers, so a queue that could not start would stall the mount.
int cfusewire_uring_prepare(struct fuse_session *session, int fuse_fd, size_t max_payload) {
    unsigned depth = atomic_load(&requested_depth);
    if (depth == 0 || atomic_load(&running_pool) != NULL) return 0;
    struct uring_pool *pool = calloc(1, sizeof(*pool));
    if (!pool) return 0;
    pool->session = session;
    pool->fuse_fd = fuse_fd;
    pool->depth = depth;
    pool->poll_ns = (unsigned long long)atomic_load(&requested_poll_us) * 1000;
    pool->payload_size = (max_payload + 4095) & ~(size_t)4095;
    pool->queue_count = possible_cpus();
    pool->teardown_fd = eventfd(0, EFD_CLOEXEC);
    pool->queues = calloc(pool->queue_count, sizeof(struct uring_queue));
    if (pool->teardown_fd < 0 || !pool->queues) { say(3, "io_uring: out of memory; staying on /dev/fuse"); pool_free(pool); return 0; }
    for (unsigned i = 0; i < pool->queue_count; i++) { pool->queues[i].wake_fd = -1; pool->queues[i].ring_fd = -1; }
    for (unsigned i = 0; i < pool->queue_count; i++) {
        struct uring_queue *q = &pool->queues[i];
        q->pool = pool;
        q->qid = (int)i;
        q->entries = calloc(depth, sizeof(struct ring_entry));
        q->wake_fd = eventfd(0, EFD_CLOEXEC);
        int rc = (!q->entries || q->wake_fd < 0) ? -ENOMEM : queue_allocate(pool, q);
        if (rc < 0) {
            say(3, "io_uring: cannot set up queue %u (%s); staying on /dev/fuse", i, strerror(-rc));
            pool_free(pool);
            return 0;
        }
    }
    pthread_mutex_init(&pool->bulk_lock, NULL);
    pthread_cond_init(&pool->bulk_wake, NULL);
    pthread_cond_init(&pool->go_changed, NULL);
    pool->bulk_lock_ready = 1;
    pool->bulk_threads = calloc(pool->queue_count, sizeof(pthread_t));
    atomic_store(&running_pool, pool);
    // One bulk worker per CPU; without any, large READs are served on the queue threads like the rest.
    for (unsigned i = 0; pool->bulk_threads && i < pool->queue_count; i++) {
        if (pthread_create(&pool->bulk_threads[pool->bulk_count], NULL, bulk_main, pool) != 0) break;
        pool->bulk_count++;
    }
    for (unsigned i = 0; i < pool->queue_count; i++) {
        struct uring_queue *q = &pool->queues[i];
        if (pthread_create(&q->thread, NULL, queue_main, q) != 0) {
            say(3, "io_uring: cannot start the thread of queue %u; staying on /dev/fuse", i);
            pool_abandon(pool);
            return 0;
        }
        q->thread_started = 1;
    }
    return 1;
}

void cfusewire_uring_launch(int reply_written) {
    struct uring_pool *pool = atomic_load(&running_pool);
    if (!pool) return;
    if (!reply_written) { pool_abandon(pool); return; }
    pthread_mutex_lock(&pool->bulk_lock);
    pool->go = 1;
    pthread_cond_broadcast(&pool->go_changed);
    pthread_mutex_unlock(&pool->bulk_lock);
}

void cfusewire_uring_stop(void) {
    struct uring_pool *pool = atomic_load(&running_pool);
    if (!pool) return;
    uint64_t one = 1;
    if (write(pool->teardown_fd, &one, sizeof(one)) != sizeof(one)) say(3, "io_uring: cannot wake the queues: %s", strerror(errno));
    pool_join_and_free(pool);
}
