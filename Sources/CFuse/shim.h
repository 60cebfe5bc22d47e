#ifndef VIKINGFS_CFUSE_SHIM_H
#define VIKINGFS_CFUSE_SHIM_H
// No _GNU_SOURCE here: it changes glibc's struct definitions (fd_set) and then this module and SwiftGlibc
// disagree about them. The GNU calls (renameat2, fallocate, xattrs, prctl) are in CSystem.
// 312, not 35: the 3.14 headers compare against 312, and with 35 fuse_loop_mt becomes a macro Swift cannot see.
#define FUSE_USE_VERSION 312
#include <fuse3/fuse.h>
#include <fuse3/fuse_lowlevel.h>
#include <fcntl.h>
#include <stdio.h>
#include <errno.h>
#include <unistd.h>

static inline int cfuse_errno(void) { return errno; }
// openat is variadic; Swift cannot pass it a mode.
static inline int cfuse_open_mode(int dirfd, const char *path, int flags, mode_t mode) {
    return openat(dirfd, path, flags, mode);
}
// fuse_session_loop_mt is a macro over versioned symbols; Swift cannot see it.
static inline int cfuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *config) {
    return fuse_session_loop_mt(se, config);
}
#endif
