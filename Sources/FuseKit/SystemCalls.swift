import CSystem

/// GNU system calls that SwiftGlibc does not expose (it is built without _GNU_SOURCE).
public enum GNU {
    public static let renameNoReplace: UInt32 = UInt32(CSYSTEM_RENAME_NOREPLACE)
    public static let renameExchange: UInt32 = UInt32(CSYSTEM_RENAME_EXCHANGE)
    public static let fallocKeepSize: Int32 = Int32(CSYSTEM_FALLOC_FL_KEEP_SIZE)
    /// Open only to name the inode (no I/O); follows it through renames.
    public static let openPath: Int32 = Int32(CSYSTEM_O_PATH)
    /// `*at` calls on the fd itself when the path is "".
    public static let atEmptyPath: Int32 = Int32(CSYSTEM_AT_EMPTY_PATH)
    /// lseek to the next hole at or after the offset (the file's size when there is none).
    public static let seekHole: Int32 = Int32(CSYSTEM_SEEK_HOLE)

    public static func renameat2(_ oldDir: Int32, _ old: UnsafePointer<CChar>, _ newDir: Int32, _ new: UnsafePointer<CChar>, flags: UInt32) -> Int32 {
        CSystem.renameat2(oldDir, old, newDir, new, flags)
    }

    /// dup2 that keeps close-on-exec on the new descriptor.
    public static func dup3(_ old: Int32, _ new: Int32, flags: Int32) -> Int32 { CSystem.dup3(old, new, flags) }

    public static func fallocate(_ fd: Int32, mode: Int32, offset: Int64, length: Int64) -> Int32 {
        CSystem.fallocate(fd, mode, off_t(offset), off_t(length))
    }
}

/// Extended-attribute calls (`<sys/xattr.h>` is not part of SwiftGlibc).
public enum ExtendedAttributes {
    // Path calls follow symbolic links: they are meant for an inode's /proc/self/fd path (see `BackingInode`).
    public static func get(path: UnsafePointer<CChar>, name: String, into buffer: UnsafeMutableRawPointer?, size: Int) -> Int {
        getxattr(path, name, buffer, size)
    }
    public static func set(path: UnsafePointer<CChar>, name: String, value: UnsafeRawPointer?, size: Int, flags: Int32) -> Int32 {
        setxattr(path, name, value, size, flags)
    }
    public static func list(path: UnsafePointer<CChar>, into buffer: UnsafeMutablePointer<CChar>?, size: Int) -> Int {
        listxattr(path, buffer, size)
    }
    public static func remove(path: UnsafePointer<CChar>, name: String) -> Int32 { removexattr(path, name) }
    public static func get(fd: Int32, name: String, into buffer: UnsafeMutableRawPointer?, size: Int) -> Int {
        fgetxattr(fd, name, buffer, size)
    }
    public static func set(fd: Int32, name: String, value: UnsafeRawPointer?, size: Int, flags: Int32) -> Int32 {
        fsetxattr(fd, name, value, size, flags)
    }
    public static func list(fd: Int32, into buffer: UnsafeMutablePointer<CChar>?, size: Int) -> Int {
        flistxattr(fd, buffer, size)
    }
}

public enum ProcessMemory {
    /// Caps glibc's malloc arenas: a daemon whose worker threads each get an arena keeps each arena's free memory
    /// (measured on vikingfs: 6 MiB more peak RSS over the benchmark with the default of 8 per core).
    public static func limitMallocArenas(_ count: Int32) { _ = csystem_limit_malloc_arenas(count) }
}

public enum ProcessHardening {
    /// No core dumps and no ptrace by other users' processes: a crash must not write key material to disk.
    @discardableResult
    public static func disableCoreDumps() -> Bool { csystem_set_undumpable() == 0 }
}
