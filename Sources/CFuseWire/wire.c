#define FUSE_USE_VERSION 312
#include "CFuseWire.h"
#include "wire_internal.h"
#include <fuse3/fuse_lowlevel.h>
#include <linux/fuse.h>
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

_Static_assert(CFUSEWIRE_PARALLEL_DIROPS == FUSE_PARALLEL_DIROPS, "kernel ABI");
_Static_assert(CFUSEWIRE_CACHE_SYMLINKS == FUSE_CACHE_SYMLINKS, "kernel ABI");
_Static_assert(CFUSEWIRE_HANDLE_KILLPRIV_V2 == FUSE_HANDLE_KILLPRIV_V2, "kernel ABI");

// INIT happens once, before any other request; the INIT request and its reply pass on one thread. Atomics only so
// that later requests on other threads read these without a data race.
static _Atomic uint64_t init_unique;           // 0: no INIT reply pending
static _Atomic uint32_t kernel_offered;        // the INIT request's flags (low 32 bits)
static _Atomic uint32_t kernel_offered2;       // and its flags2 (FUSE_INIT_EXT), where io_uring is offered
static _Atomic uint32_t requested_flags;

static _Thread_local int request_drops_setid;
static struct fuse_session *_Atomic installed_session;

// Reads a field of the request body if the request is long enough to hold it (a short request is libfuse's to refuse).
#define BODY_FIELD(buf, n, type, field, out)                                                                  \
    ((size_t)(n) >= sizeof(struct fuse_in_header) + offsetof(type, field) + sizeof(out)                      \
     ? (memcpy(&(out), (const char *)(buf) + sizeof(struct fuse_in_header) + offsetof(type, field),          \
               sizeof(out)), 1)                                                                               \
     : 0)

void cfusewire_note_request(const void *buf, ssize_t n) {
    request_drops_setid = 0;
    if (n < (ssize_t)sizeof(struct fuse_in_header)) return;
    struct fuse_in_header header;
    memcpy(&header, buf, sizeof(header));
    uint32_t value = 0;
    switch (header.opcode) {
    case FUSE_INIT:
        if (BODY_FIELD(buf, n, struct fuse_init_in, flags, value)) {
            uint32_t flags2 = 0;
            if ((value & FUSE_INIT_EXT) && BODY_FIELD(buf, n, struct fuse_init_in, flags2, flags2))
                atomic_store(&kernel_offered2, flags2);
            atomic_store(&kernel_offered, value);
            atomic_store(&init_unique, header.unique);
        }
        break;
    case FUSE_WRITE:
        if (BODY_FIELD(buf, n, struct fuse_write_in, write_flags, value))
            request_drops_setid = (value & FUSE_WRITE_KILL_SUIDGID) != 0;
        break;
    case FUSE_SETATTR:
        if (BODY_FIELD(buf, n, struct fuse_setattr_in, valid, value))
            request_drops_setid = (value & FATTR_KILL_SUIDGID) != 0;
        break;
    case FUSE_OPEN:
        if (BODY_FIELD(buf, n, struct fuse_open_in, open_flags, value))
            request_drops_setid = (value & FUSE_OPEN_KILL_SUIDGID) != 0;
        break;
    case FUSE_CREATE:
        if (BODY_FIELD(buf, n, struct fuse_create_in, open_flags, value))
            request_drops_setid = (value & FUSE_OPEN_KILL_SUIDGID) != 0;
        break;
    default:
        break;
    }
}

static ssize_t wire_read(int fd, void *buf, size_t size, void *userdata) {
    (void)userdata;
    ssize_t n = read(fd, buf, size);
    int saved = errno;
    cfusewire_note_request(buf, n);
    errno = saved;
    return n;
}

static ssize_t wire_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;  // libfuse passes the file system's user data, not the session
    ssize_t taken = cfusewire_uring_reply(iov, count);
    if (taken >= 0 || errno != ENOTSUP) return taken;
    uint64_t pending = atomic_load_explicit(&init_unique, memory_order_relaxed);
    int uring_prepared = 0;  // the INIT reply asks for io_uring; its queues wait for the reply to be written
    if (pending != 0 && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
        struct fuse_out_header out;
        memcpy(&out, iov[0].iov_base, sizeof(out));
        if (out.unique == pending) {
            atomic_store(&init_unique, 0);
            char *reply = iov[1].iov_base;
            size_t at = offsetof(struct fuse_init_out, flags);
            if (out.error == 0 && iov[1].iov_len >= at + sizeof(uint32_t)) {
                uint32_t flags;
                memcpy(&flags, reply + at, sizeof(flags));
                flags |= atomic_load(&requested_flags) & atomic_load(&kernel_offered);
                size_t at2 = offsetof(struct fuse_init_out, flags2);
                if (cfusewire_uring_wanted(atomic_load(&kernel_offered2)) && iov[1].iov_len >= at2 + sizeof(uint32_t)) {
                    uint32_t flags2, max_write;
                    uint16_t max_pages = 32;  // the kernel's default without FUSE_MAX_PAGES
                    memcpy(&max_write, reply + offsetof(struct fuse_init_out, max_write), sizeof(max_write));
                    if (flags & FUSE_MAX_PAGES)
                        memcpy(&max_pages, reply + offsetof(struct fuse_init_out, max_pages), sizeof(max_pages));
                    size_t max_payload = max_write;
                    if ((size_t)max_pages * 4096 > max_payload) max_payload = (size_t)max_pages * 4096;
                    if (max_payload < 8192) max_payload = 8192;  // the kernel's FUSE_MIN_READ_BUFFER
                    uring_prepared = cfusewire_uring_prepare(atomic_load(&installed_session), fd, max_payload);
                    if (uring_prepared) {
                        memcpy(&flags2, reply + at2, sizeof(flags2));
                        flags2 |= CFUSEWIRE_FLAGS2_OVER_IO_URING;
                        flags |= FUSE_INIT_EXT;
                        memcpy(reply + at2, &flags2, sizeof(flags2));
                    }
                }
                // libfuse's own reply struct (a local of its do_init), rewritten before it reaches the kernel.
                memcpy(reply + at, &flags, sizeof(flags));
            }
        }
    }
    ssize_t written = writev(fd, iov, count);
    // The kernel registers ring entries only once it has taken the INIT reply.
    if (uring_prepared) cfusewire_uring_launch(written >= 0);
    return written;
}

int cfusewire_install(struct fuse_session *session) {
    static const struct fuse_custom_io io = { .writev = wire_writev, .read = wire_read };
    atomic_store(&installed_session, session);  // for the io_uring queues, which libfuse's dispatcher serves too
    return fuse_session_custom_io(session, &io, fuse_session_fd(session));
}

void cfusewire_request_init_flags(uint32_t flags) { atomic_store(&requested_flags, flags); }

int cfusewire_request_drops_setid(void) { return request_drops_setid; }
