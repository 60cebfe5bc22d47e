#ifndef VIKINGFS_CSYSTEM_SHIM_H
#define VIKINGFS_CSYSTEM_SHIM_H
// GNU libc calls that SwiftGlibc does not declare. Header-only: everything is in libc.
// No _GNU_SOURCE here: it changes glibc's struct definitions (fd_set) and then this module and SwiftGlibc
// disagree about them. The GNU functions are declared by hand instead, as glibc (2.14 and later) exports them.
#include <sys/types.h>
#include <sys/xattr.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <malloc.h>

extern int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
extern int fallocate(int fd, int mode, off_t offset, off_t len);
extern int syncfs(int fd);
extern int dup3(int oldfd, int newfd, int flags);
enum { CSYSTEM_RENAME_NOREPLACE = 1, CSYSTEM_RENAME_EXCHANGE = 2, CSYSTEM_FALLOC_FL_KEEP_SIZE = 1 };
// O_PATH and AT_EMPTY_PATH are GNU-only in glibc's headers; the values are Linux's ABI.
enum { CSYSTEM_O_PATH = 010000000, CSYSTEM_AT_EMPTY_PATH = 0x1000, CSYSTEM_SEEK_HOLE = 4 };

// At most `count` malloc arenas: glibc otherwise gives busy threads an arena each, and their free lists add up.
static inline int csystem_limit_malloc_arenas(int count) { return mallopt(M_ARENA_MAX, count); }

// No core dumps, and not dumpable (no ptrace by other users' processes). prctl is variadic; Swift cannot call it.
static inline int csystem_set_undumpable(void) {
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}
#endif
