#ifndef VIKINGFS_CFUSE_SHIM_H
#define VIKINGFS_CFUSE_SHIM_H
// _GNU_SOURCE first: renameat2, statx, copy_file_range, O_DIRECT stay invisible otherwise.
#define _GNU_SOURCE 1
// 312, not 35: the 3.14 headers compare against 312, and with 35 fuse_loop_mt becomes a macro Swift cannot see.
#define FUSE_USE_VERSION 312
#include <fuse3/fuse.h>
#include <fuse3/fuse_lowlevel.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <signal.h>
#include <stdio.h>

static inline int cfuse_errno(void) { return errno; }
static inline void cfuse_set_errno(int e) { errno = e; }
static inline void cfuse_syslog(int priority, const char *message) { syslog(priority, "%s", message); }
// RENAME_* flags arrive as unsigned int through fuse's rename callback.
static inline int cfuse_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}
static inline int cfuse_open_mode(int dirfd, const char *path, int flags, mode_t mode) {
    return openat(dirfd, path, flags, mode);
}
static inline int cfuse_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
static inline int cfuse_ioctl_placeholder(void) { return 0; }
#endif
