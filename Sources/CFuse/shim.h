#ifndef VIKINGFS_CFUSE_SHIM_H
#define VIKINGFS_CFUSE_SHIM_H
// No _GNU_SOURCE here: it changes glibc's struct definitions (fd_set) and then this module and SwiftGlibc
// disagree about them. The few GNU calls needed are declared by hand below.
// 312, not 35: the 3.14 headers compare against 312, and with 35 fuse_loop_mt becomes a macro Swift cannot see.
#define FUSE_USE_VERSION 312
#include <fuse3/fuse.h>
#include <fuse3/fuse_lowlevel.h>
#include <fcntl.h>
#include <stdio.h>
#include <errno.h>
#include <unistd.h>
#include <sys/xattr.h>
#include <sys/prctl.h>
#include <sys/resource.h>

extern int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
extern int fallocate(int fd, int mode, off_t offset, off_t len);
enum { CFUSE_RENAME_NOREPLACE = 1, CFUSE_RENAME_EXCHANGE = 2, CFUSE_FALLOC_FL_KEEP_SIZE = 1 };

// prctl is variadic; Swift cannot call it directly.
static inline int cfuse_set_undumpable(void) {
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static inline int cfuse_errno(void) { return errno; }
static inline void cfuse_set_errno(int e) { errno = e; }
// RENAME_* flags arrive as unsigned int through fuse's rename callback.
static inline int cfuse_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}
static inline int cfuse_open_mode(int dirfd, const char *path, int flags, mode_t mode) {
    return openat(dirfd, path, flags, mode);
}
static inline int cfuse_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
// fuse_new and fuse_loop_mt are macros over versioned symbols; Swift sees neither.
static inline struct fuse *cfuse_new(struct fuse_args *args, const struct fuse_operations *op, size_t size, void *data) {
    return fuse_new(args, op, size, data);
}
static inline int cfuse_loop_mt(struct fuse *f, struct fuse_loop_config *config) { return fuse_loop_mt(f, config); }
static inline int cfuse_fallocate(int fd, int mode, off_t offset, off_t len) { return fallocate(fd, mode, offset, len); }
#endif
