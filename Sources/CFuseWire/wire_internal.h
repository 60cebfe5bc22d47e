#ifndef VIKINGFS_CFUSEWIRE_INTERNAL_H
#define VIKINGFS_CFUSEWIRE_INTERNAL_H
// Shared between the /dev/fuse hooks (wire.c) and the io_uring transport (uring.c).
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct fuse_session;

// Notes the per-request facts of a whole request (fuse_in_header, op header, payload) for the serving thread.
void cfusewire_note_request(const void *buf, ssize_t n);

// FUSE_OVER_IO_URING (1 << 41 of the 64-bit INIT flags): bit 9 of flags2. Linux 6.14, newer than <linux/fuse.h>.
#define CFUSEWIRE_FLAGS2_OVER_IO_URING (1u << 9)

// Whether io_uring serving was asked for (cfusewire_uring_request) and the kernel offered it in INIT.
int cfusewire_uring_wanted(uint32_t kernel_flags2);

// Before the INIT reply asks for FUSE_OVER_IO_URING: sets up the rings, their buffers and threads (which wait).
// Returns 1 when all is ready (then ask for io_uring), 0 after a logged failure (then do not ask).
// max_payload is the largest request or reply payload the kernel may send (max_write, max_pages).
int cfusewire_uring_prepare(struct fuse_session *session, int fuse_fd, size_t max_payload);

// After the INIT reply was written (1: the queues register and serve) or could not be (0: all is freed).
void cfusewire_uring_launch(int reply_written);

// A reply written by libfuse on the thread serving a ring entry goes into that entry (returns the bytes taken,
// as writev would); -1 with errno ENOTSUP when the reply is not for a ring entry.
ssize_t cfusewire_uring_reply(const struct iovec *iov, int count);
#endif
