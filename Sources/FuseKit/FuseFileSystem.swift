import CFuse
#if canImport(Glibc)
import Glibc
#endif

/// The kernel's name for an inode (libfuse's `fuse_ino_t`). `FuseInode.root` is the mount's root; every other
/// value is one the file system handed out in a `FuseEntry` and keeps valid until `forget` drops its last lookup.
public typealias FuseInode = UInt64

public extension FuseInode {
    static let root: FuseInode = 1
}

/// What `lookup`, `mkdir`, `create`, ... give back: the inode the kernel will use from now on, and its attributes.
/// Each entry returned counts one lookup the file system must remember until `forget`.
public struct FuseEntry {
    public var inode: FuseInode
    public var attributes: stat
    /// nil: the mount's default (`FuseInitSettings`).
    public var attributeTimeout: Double?
    public var entryTimeout: Double?

    public init(inode: FuseInode, attributes: stat, attributeTimeout: Double? = nil, entryTimeout: Double? = nil) {
        self.inode = inode
        self.attributes = attributes
        self.attributeTimeout = attributeTimeout
        self.entryTimeout = entryTimeout
    }
}

/// What `open` and `create` give back: the handle the kernel passes to later calls, and caching hints.
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

/// The attribute changes of one `setattr` request (chmod, chown, truncate, utimensat all arrive as one).
public struct AttributeChanges {
    public var mode: mode_t?
    public var uid: uid_t?
    public var gid: gid_t?
    public var size: Int64?
    /// `utimensat`-style times: `UTIME_NOW`, `UTIME_OMIT` or a value, for access and modification time.
    public var times: (access: timespec, modification: timespec)?

    public init() {}

    /// `<sys/stat.h>`'s UTIME_NOW and UTIME_OMIT, which SwiftGlibc does not import.
    public static let utimeNow = (1 << 30) - 1
    public static let utimeOmit = (1 << 30) - 2

    init(_ attr: stat, valid: Int32) {
        if valid & FUSE_SET_ATTR_MODE != 0 { mode = attr.st_mode }
        if valid & FUSE_SET_ATTR_UID != 0 { uid = attr.st_uid }
        if valid & FUSE_SET_ATTR_GID != 0 { gid = attr.st_gid }
        if valid & FUSE_SET_ATTR_SIZE != 0 { size = Int64(attr.st_size) }
        let timeBits = FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW
        if valid & timeBits != 0 {
            func pick(_ set: Int32, _ now: Int32, _ value: timespec) -> timespec {
                if valid & now != 0 { return timespec(tv_sec: 0, tv_nsec: AttributeChanges.utimeNow) }
                if valid & set != 0 { return value }
                return timespec(tv_sec: 0, tv_nsec: AttributeChanges.utimeOmit)
            }
            times = (pick(FUSE_SET_ATTR_ATIME, FUSE_SET_ATTR_ATIME_NOW, attr.st_atim),
                     pick(FUSE_SET_ATTR_MTIME, FUSE_SET_ATTR_MTIME_NOW, attr.st_mtim))
        }
    }
}

/// Who is making a request.
public struct FuseCaller {
    public let uid: uid_t
    public let gid: gid_t
    public let pid: pid_t

    init(_ req: fuse_req_t?) {
        if let req, let context = fuse_req_ctx(req) {
            uid = context.pointee.uid
            gid = context.pointee.gid
            pid = context.pointee.pid
        } else {
            uid = getuid(); gid = getgid(); pid = 0
        }
    }
}

/// Fills the kernel's buffer during `readdir`. Each entry carries the offset of the entry after it, which the
/// kernel passes back to continue the listing.
public struct DirectoryBuffer {
    let request: fuse_req_t?
    let base: UnsafeMutablePointer<CChar>
    let capacity: Int
    private(set) var used = 0
    /// True for READDIRPLUS: entries must then come with full attributes (`add(_:entry:nextOffset:)`), each of
    /// which counts a lookup, exactly like `lookup`.
    public let wantsAttributes: Bool

    init(request: fuse_req_t?, base: UnsafeMutablePointer<CChar>, capacity: Int, wantsAttributes: Bool) {
        self.request = request
        self.base = base
        self.capacity = capacity
        self.wantsAttributes = wantsAttributes
    }

    /// Adds an entry without attributes (and without a lookup): every entry of a plain listing, and "." and ".."
    /// in a READDIRPLUS one. Returns false (and adds nothing) when the buffer is full.
    public mutating func add(_ name: UnsafePointer<CChar>, inode: UInt64, type: mode_t, nextOffset: Int64) -> Bool {
        var st = stat()
        st.st_ino = UInt(truncatingIfNeeded: inode)
        st.st_mode = type
        let needed: Int
        if wantsAttributes {
            // A READDIRPLUS reply holds only "plus" entries; inode 0 tells the kernel there is no lookup to count.
            var parameters = fuse_entry_param()
            parameters.attr = st
            needed = fuse_add_direntry_plus(request, base + used, capacity - used, name, &parameters, off_t(nextOffset))
        } else {
            needed = fuse_add_direntry(request, base + used, capacity - used, name, &st, off_t(nextOffset))
        }
        guard needed <= capacity - used else { return false }
        used += needed
        return true
    }

    /// Adds an entry with attributes (READDIRPLUS). Returns false when full; the caller then undoes the lookup.
    public mutating func add(_ name: UnsafePointer<CChar>, entry: FuseEntry, settings: FuseInitSettings, nextOffset: Int64) -> Bool {
        var parameters = entry.parameters(settings)
        let needed = fuse_add_direntry_plus(request, base + used, capacity - used, name, &parameters, off_t(nextOffset))
        guard needed <= capacity - used else { return false }
        used += needed
        return true
    }
}

extension FuseEntry {
    func parameters(_ settings: FuseInitSettings) -> fuse_entry_param {
        var parameters = fuse_entry_param()
        parameters.ino = fuse_ino_t(inode)
        parameters.generation = 0
        parameters.attr = attributes
        parameters.attr_timeout = attributeTimeout ?? settings.attributeTimeout
        parameters.entry_timeout = entryTimeout ?? settings.entryTimeout
        return parameters
    }
}

/// What the kernel negotiated and what the file system wants; passed to `initialize`.
public struct FuseInitSettings {
    public var attributeTimeout: Double = 1.0
    public var entryTimeout: Double = 1.0
    /// How long the kernel may remember that a name does not exist (0: ask every time).
    public var negativeTimeout: Double = 0.0
    public var writebackCache = false
    /// Answer directory listings with attributes (READDIRPLUS), letting the kernel choose when (`auto`).
    public var readdirPlus = false
    public var maxWrite: UInt32 = 1 << 20
    /// The kernel keeps the smaller of this and the mount's readahead window at INIT (see `FuseMountConfiguration.readaheadKiB`).
    public var maxReadahead: UInt32 = 2 << 20
    /// Lookups and listings in one directory run in parallel (libfuse's default, which 3.14 never tells the
    /// kernel; FuseKit adds it to the INIT reply).
    public var parallelDirOps = true
    /// The kernel keeps symlink targets in its page cache (nothing else changes them: a symlink's target is fixed).
    public var cacheSymlinks = true
    /// FUSE_HANDLE_KILLPRIV_V2: FuseKit, not the kernel, clears set-user-ID and set-group-ID when a caller
    /// without CAP_FSETID writes, truncates or chowns (through the file system's own getattr/setattr), and the
    /// kernel in return stops asking for `security.capability` before every write(2) once it has seen a file
    /// without one (SB_NOSEC). Capabilities themselves stay the kernel's: it still removes them, as it checks
    /// each file once.
    public var handleKillPrivileges = true
    /// False: the extended-attribute operations are not offered, and the kernel, told ENOSYS once, stops asking,
    /// including the `security.capability` lookup it otherwise makes before every write(2).
    public var extendedAttributes = true
    public init() {}
}

/// The operations a file system implements, on inodes (libfuse's low-level API): no paths, no node table kept by
/// libfuse. Every method throws `Errno`; the default is `ENOSYS` (or success where the kernel expects a no-op).
/// Methods are called concurrently from libfuse's worker threads.
public protocol FuseFileSystem: AnyObject {
    func initialize(settings: inout FuseInitSettings)
    func destroy()

    func lookup(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) -> FuseEntry
    /// The kernel dropped `lookups` references to `inode`; at zero the inode number may be reused.
    func forget(_ inode: FuseInode, lookups: UInt64)
    func getattr(_ inode: FuseInode, handle: UInt64?) throws(Errno) -> stat
    func setattr(_ inode: FuseInode, _ changes: AttributeChanges, handle: UInt64?) throws(Errno) -> stat
    func readlink(_ inode: FuseInode, into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno)
    func mknod(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, device: dev_t, caller: FuseCaller) throws(Errno) -> FuseEntry
    func mkdir(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, caller: FuseCaller) throws(Errno) -> FuseEntry
    func unlink(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno)
    func rmdir(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno)
    func symlink(target: UnsafePointer<CChar>, parent: FuseInode, name: UnsafePointer<CChar>, caller: FuseCaller) throws(Errno) -> FuseEntry
    func rename(parent: FuseInode, name: UnsafePointer<CChar>, newParent: FuseInode, newName: UnsafePointer<CChar>, flags: UInt32) throws(Errno)
    func link(_ inode: FuseInode, newParent: FuseInode, newName: UnsafePointer<CChar>) throws(Errno) -> FuseEntry
    func open(_ inode: FuseInode, flags: Int32) throws(Errno) -> OpenResult
    func create(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, flags: Int32, caller: FuseCaller) throws(Errno) -> (FuseEntry, OpenResult)
    func read(_ inode: FuseInode, handle: UInt64, into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int
    func write(_ inode: FuseInode, handle: UInt64, from buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int
    func flush(_ inode: FuseInode, handle: UInt64) throws(Errno)
    func release(_ inode: FuseInode, handle: UInt64)
    func fsync(_ inode: FuseInode, handle: UInt64, dataOnly: Bool) throws(Errno)
    func opendir(_ inode: FuseInode) throws(Errno) -> UInt64
    /// Adds entries starting after `offset` (0: from the beginning) until the buffer is full or the listing ends.
    func readdir(_ inode: FuseInode, handle: UInt64, offset: Int64, into buffer: inout DirectoryBuffer) throws(Errno)
    func releasedir(_ inode: FuseInode, handle: UInt64)
    func fsyncdir(_ inode: FuseInode, handle: UInt64, dataOnly: Bool) throws(Errno)
    func statfs(_ inode: FuseInode) throws(Errno) -> statvfs
    func setxattr(_ inode: FuseInode, name: UnsafePointer<CChar>, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno)
    /// With an empty buffer, returns the size the value needs.
    func getxattr(_ inode: FuseInode, name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    func listxattr(_ inode: FuseInode, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    func removexattr(_ inode: FuseInode, name: UnsafePointer<CChar>) throws(Errno)
    func access(_ inode: FuseInode, mask: Int32) throws(Errno)
    func fallocate(_ inode: FuseInode, handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(Errno)
}

public extension FuseFileSystem {
    func initialize(settings: inout FuseInitSettings) {}
    func destroy() {}
    func setattr(_ inode: FuseInode, _ changes: AttributeChanges, handle: UInt64?) throws(Errno) -> stat { throw .notImplemented }
    func readlink(_ inode: FuseInode, into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno) { throw .notImplemented }
    func mknod(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, device: dev_t, caller: FuseCaller) throws(Errno) -> FuseEntry { throw .notImplemented }
    func mkdir(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, caller: FuseCaller) throws(Errno) -> FuseEntry { throw .notImplemented }
    func unlink(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) { throw .notImplemented }
    func rmdir(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) { throw .notImplemented }
    func symlink(target: UnsafePointer<CChar>, parent: FuseInode, name: UnsafePointer<CChar>, caller: FuseCaller) throws(Errno) -> FuseEntry { throw .notImplemented }
    func rename(parent: FuseInode, name: UnsafePointer<CChar>, newParent: FuseInode, newName: UnsafePointer<CChar>, flags: UInt32) throws(Errno) { throw .notImplemented }
    func link(_ inode: FuseInode, newParent: FuseInode, newName: UnsafePointer<CChar>) throws(Errno) -> FuseEntry { throw .notImplemented }
    func create(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, flags: Int32, caller: FuseCaller) throws(Errno) -> (FuseEntry, OpenResult) { throw .notImplemented }
    func write(_ inode: FuseInode, handle: UInt64, from buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int { throw .notImplemented }
    func flush(_ inode: FuseInode, handle: UInt64) throws(Errno) {}
    func release(_ inode: FuseInode, handle: UInt64) {}
    func fsync(_ inode: FuseInode, handle: UInt64, dataOnly: Bool) throws(Errno) {}
    func opendir(_ inode: FuseInode) throws(Errno) -> UInt64 { 0 }
    func releasedir(_ inode: FuseInode, handle: UInt64) {}
    func fsyncdir(_ inode: FuseInode, handle: UInt64, dataOnly: Bool) throws(Errno) {}
    func setxattr(_ inode: FuseInode, name: UnsafePointer<CChar>, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) { throw .notSupported }
    func getxattr(_ inode: FuseInode, name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { throw .notSupported }
    func listxattr(_ inode: FuseInode, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { 0 }
    func removexattr(_ inode: FuseInode, name: UnsafePointer<CChar>) throws(Errno) { throw .notSupported }
    func access(_ inode: FuseInode, mask: Int32) throws(Errno) {}
    func fallocate(_ inode: FuseInode, handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(Errno) { throw .notSupported }
}
