#ifndef VIKINGFS_CFUSEWIRE_H
#define VIKINGFS_CFUSEWIRE_H
// The FUSE wire below libfuse 3.14: what its INIT reply cannot say and what its request decoding drops.
//
// libfuse 3.14 builds its INIT reply from a fixed list of capabilities. It never sends FUSE_PARALLEL_DIROPS
// (its own default; the kernel then serializes lookups and readdir per directory), has no
// FUSE_HANDLE_KILLPRIV_V2 (without it the kernel asks for security.capability before every write(2), one
// round trip each), and does not hand the file system the kernel's "drop set-user-ID/set-group-ID" flags.
// These hooks sit on libfuse's custom I/O interface (fuse_session_custom_io): `read` notes the request
// facts for the thread that will serve it (libfuse's loops read and serve a request on one thread), and
// `writev` adds the extra INIT flags the kernel offered.
#include <stddef.h>
#include <stdint.h>

struct fuse_session;

// Kernel INIT flags (include/uapi/linux/fuse.h), checked against <linux/fuse.h> in the implementation.
enum {
    CFUSEWIRE_PARALLEL_DIROPS = 1u << 18,
    CFUSEWIRE_CACHE_SYMLINKS = 1u << 23,
    CFUSEWIRE_HANDLE_KILLPRIV_V2 = 1u << 28,
};

// Routes the session's device I/O through the hooks. Call after fuse_session_mount, before the loop.
// Returns 0 or a negative errno.
int cfusewire_install(struct fuse_session *session);

// The flags to add to libfuse's INIT reply, each only if the kernel offered it. Call from the init callback.
void cfusewire_request_init_flags(uint32_t flags);

// Whether the request this thread is serving carries the kernel's FUSE_WRITE_KILL_SUIDGID (WRITE),
// FATTR_KILL_SUIDGID (SETATTR) or FUSE_OPEN_KILL_SUIDGID (OPEN, CREATE): the caller lacks CAP_FSETID,
// and under FUSE_HANDLE_KILLPRIV_V2 the file system clears S_ISUID, and S_ISGID when group-executable.
int cfusewire_request_drops_setid(void);

// FUSE over io_uring (Linux 6.14+, where the fuse module's enable_uring is on): asks for it in the INIT reply
// and, once the kernel took that reply, serves requests from one queue per CPU of `entries_per_queue` ring
// entries (each as large as FUSE's largest request), each queue's thread pinned to its CPU. 0: /dev/fuse only.
// After a request a queue's thread polls up to `poll_microseconds` for the next before it sleeps (0: sleeps at
// once). Call before the loop reads INIT. Whatever fails to set up leaves the mount on /dev/fuse, with a log line.
void cfusewire_uring_request(unsigned entries_per_queue, unsigned poll_microseconds);

// Where a reply of up to `size` bytes can be built in place when the calling thread serves a request from a ring:
// the entry's payload buffer, which the reply then leaves without a copy. NULL otherwise (a /dev/fuse request, or
// too large). Only for requests without a payload of their own (READ, READDIR): it overwrites the request's.
void *cfusewire_reply_buffer(size_t size);

// Stops the queue threads and frees the rings. Call after the loop returned, before the session is destroyed.
void cfusewire_uring_stop(void);

// Where the io_uring transport's messages go (level: syslog's, 3 error, 6 info). Set before mounting.
void cfusewire_set_logger(void (*log)(int level, const char *message));
#endif
