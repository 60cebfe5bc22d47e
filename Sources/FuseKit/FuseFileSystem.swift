import CFuse
#if canImport(Glibc)
import Glibc
#endif

/// A path as libfuse hands it over ("/a/b"), or nil for an open-but-unlinked file (`nullpath_ok`).
/// Kept as the C string to spare an allocation per call; `string` makes a Swift String when one is needed.
public struct FusePath {
    public let cString: UnsafePointer<CChar>

    /// The path relative to the mount root, suitable for `*at(rootfd, ...)` calls: "a/b", or "." for the root.
    public var relative: UnsafePointer<CChar> {
        cString[0] == 0x2f && cString[1] != 0 ? cString + 1 : FusePath.dot
    }

    public var isRoot: Bool { cString[0] == 0x2f && cString[1] == 0 }

    /// "/a/b" as a Swift string.
    public var string: String { String(cString: cString) }

    /// The relative path as a Swift string ("a/b", or "" for the root).
    public var relativeString: String { isRoot ? "" : String(cString: cString + 1) }

    nonisolated(unsafe) static let dot: UnsafePointer<CChar> = UnsafePointer(strdup("."))
}

/// What `open` and `create` give back: the handle libfuse stores in `fh`, and caching hints for the kernel.
public struct OpenResult {
    public var handle: UInt64
    /// Bypass the page cache for this open file.
    public var directIO: Bool = false
    /// Keep cached pages from earlier opens (safe when content cannot change underneath).
    public var keepCache: Bool = false

    public init(handle: UInt64, directIO: Bool = false, keepCache: Bool = false) {
        self.handle = handle
        self.directIO = directIO
        self.keepCache = keepCache
    }
}

/// Adds directory entries during `readdir`. Returns false when libfuse's buffer is full.
public struct DirectoryFiller {
    let buffer: UnsafeMutableRawPointer?
    let filler: fuse_fill_dir_t

    @discardableResult
    public func add(_ name: UnsafePointer<CChar>, inode: UInt64, type: mode_t) -> Bool {
        var st = stat()
        st.st_ino = UInt(truncatingIfNeeded: inode)
        st.st_mode = type
        return filler(buffer, name, &st, 0, fuse_fill_dir_flags(rawValue: 0)) == 0
    }
}

/// What the kernel negotiated and what the file system wants; passed to `initialize`.
public struct FuseInitSettings {
    public var attributeTimeout: Double = 1.0
    public var entryTimeout: Double = 1.0
    public var negativeTimeout: Double = 0.0
    /// Report the backing file system's inode numbers (hard links, `find -inum`, tar's link detection).
    public var useInodeNumbers = true
    /// Unlink open files right away instead of renaming them to `.fuse_hidden*`; the file system must then
    /// serve operations on open handles without a path.
    public var hardRemove = true
    public var nullPathOK = true
    public var writebackCache = false
    public var maxWrite: UInt32 = 1 << 20
    public var maxReadahead: UInt32 = 1 << 20
    public var parallelDirOps = true
    public init() {}
}

/// The operations a file system implements. Every method throws `Errno`; the default is `ENOSYS`
/// (or success where the kernel expects a no-op), so a file system implements only what it supports.
/// Methods are called concurrently from libfuse's worker threads.
public protocol FuseFileSystem: AnyObject {
    func initialize(settings: inout FuseInitSettings)
    func destroy()

    func getattr(_ path: FusePath?, handle: UInt64?) throws(Errno) -> stat
    func readlink(_ path: FusePath, into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno)
    func mknod(_ path: FusePath, mode: mode_t, device: dev_t) throws(Errno)
    func mkdir(_ path: FusePath, mode: mode_t) throws(Errno)
    func unlink(_ path: FusePath) throws(Errno)
    func rmdir(_ path: FusePath) throws(Errno)
    func symlink(target: FusePath, at path: FusePath) throws(Errno)
    func rename(_ from: FusePath, to: FusePath, flags: UInt32) throws(Errno)
    func link(_ from: FusePath, to: FusePath) throws(Errno)
    func chmod(_ path: FusePath?, mode: mode_t, handle: UInt64?) throws(Errno)
    func chown(_ path: FusePath?, uid: uid_t, gid: gid_t, handle: UInt64?) throws(Errno)
    func truncate(_ path: FusePath?, size: Int64, handle: UInt64?) throws(Errno)
    func open(_ path: FusePath, flags: Int32) throws(Errno) -> OpenResult
    func create(_ path: FusePath, mode: mode_t, flags: Int32) throws(Errno) -> OpenResult
    func read(_ path: FusePath?, handle: UInt64, into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int
    func write(_ path: FusePath?, handle: UInt64, from buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int
    func statfs(_ path: FusePath) throws(Errno) -> statvfs
    func flush(_ path: FusePath?, handle: UInt64) throws(Errno)
    func release(_ path: FusePath?, handle: UInt64)
    func fsync(_ path: FusePath?, handle: UInt64, dataOnly: Bool) throws(Errno)
    func setxattr(_ path: FusePath, name: UnsafePointer<CChar>, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno)
    /// With an empty buffer, returns the size the value needs.
    func getxattr(_ path: FusePath, name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    func listxattr(_ path: FusePath, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    func removexattr(_ path: FusePath, name: UnsafePointer<CChar>) throws(Errno)
    func opendir(_ path: FusePath) throws(Errno) -> UInt64
    func readdir(_ path: FusePath?, handle: UInt64, filler: DirectoryFiller) throws(Errno)
    func releasedir(_ path: FusePath?, handle: UInt64)
    func fsyncdir(_ path: FusePath?, handle: UInt64, dataOnly: Bool) throws(Errno)
    func access(_ path: FusePath, mask: Int32) throws(Errno)
    func utimens(_ path: FusePath?, times: UnsafePointer<timespec>?, handle: UInt64?) throws(Errno)
    func fallocate(_ path: FusePath?, mode: Int32, offset: Int64, length: Int64, handle: UInt64) throws(Errno)
}

public extension FuseFileSystem {
    func initialize(settings: inout FuseInitSettings) {}
    func destroy() {}
    func readlink(_ path: FusePath, into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno) { throw .notImplemented }
    func mknod(_ path: FusePath, mode: mode_t, device: dev_t) throws(Errno) { throw .notImplemented }
    func mkdir(_ path: FusePath, mode: mode_t) throws(Errno) { throw .notImplemented }
    func unlink(_ path: FusePath) throws(Errno) { throw .notImplemented }
    func rmdir(_ path: FusePath) throws(Errno) { throw .notImplemented }
    func symlink(target: FusePath, at path: FusePath) throws(Errno) { throw .notImplemented }
    func rename(_ from: FusePath, to: FusePath, flags: UInt32) throws(Errno) { throw .notImplemented }
    func link(_ from: FusePath, to: FusePath) throws(Errno) { throw .notImplemented }
    func chmod(_ path: FusePath?, mode: mode_t, handle: UInt64?) throws(Errno) { throw .notImplemented }
    func chown(_ path: FusePath?, uid: uid_t, gid: gid_t, handle: UInt64?) throws(Errno) { throw .notImplemented }
    func truncate(_ path: FusePath?, size: Int64, handle: UInt64?) throws(Errno) { throw .notImplemented }
    func create(_ path: FusePath, mode: mode_t, flags: Int32) throws(Errno) -> OpenResult { throw .notImplemented }
    func write(_ path: FusePath?, handle: UInt64, from buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int { throw .notImplemented }
    func flush(_ path: FusePath?, handle: UInt64) throws(Errno) {}
    func release(_ path: FusePath?, handle: UInt64) {}
    func fsync(_ path: FusePath?, handle: UInt64, dataOnly: Bool) throws(Errno) {}
    func setxattr(_ path: FusePath, name: UnsafePointer<CChar>, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) { throw .notSupported }
    func getxattr(_ path: FusePath, name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { throw .notSupported }
    func listxattr(_ path: FusePath, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { 0 }
    func removexattr(_ path: FusePath, name: UnsafePointer<CChar>) throws(Errno) { throw .notSupported }
    func opendir(_ path: FusePath) throws(Errno) -> UInt64 { 0 }
    func releasedir(_ path: FusePath?, handle: UInt64) {}
    func fsyncdir(_ path: FusePath?, handle: UInt64, dataOnly: Bool) throws(Errno) {}
    func access(_ path: FusePath, mask: Int32) throws(Errno) {}
    func utimens(_ path: FusePath?, times: UnsafePointer<timespec>?, handle: UInt64?) throws(Errno) { throw .notImplemented }
    func fallocate(_ path: FusePath?, mode: Int32, offset: Int64, length: Int64, handle: UInt64) throws(Errno) { throw .notSupported }
}

/// Who is making the current request (valid only inside a callback).
public struct FuseCaller {
    public let uid: uid_t
    public let gid: gid_t
    public let pid: pid_t

    public static var current: FuseCaller {
        guard let context = fuse_get_context() else { return FuseCaller(uid: getuid(), gid: getgid(), pid: 0) }
        return FuseCaller(uid: context.pointee.uid, gid: context.pointee.gid, pid: context.pointee.pid)
    }
}
