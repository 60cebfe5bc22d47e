#if canImport(Glibc)
import Glibc
#endif

/// Identifies an inode of the backing file system.
public struct BackingInodeKey: Hashable {
    public let device: UInt64
    public let inode: UInt64
    public init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}

/// Most of the open-file limit, read on first use (a global is initialized once, thread-safely), which is the
/// first lookup: after `FuseSession` raised the limit. The rest is left for open files and directory streams.
private let descriptorBudget: Int = {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
    let soft = limit.rlim_cur == rlim_t.max ? Int.max / 2 : Int(limit.rlim_cur)
    return max(0, soft - max(1024, soft / 8))
}()

/// Past this many descriptors only directories get new ones. A directory reached by name makes each use of an
/// inode below it that is reached by name resolve two names instead of one (more, deeper down); directories are
/// few (6% of a Linux source tree), so an eighth of the budget kept for them covers most trees.
private let fileDescriptorShare: Int = descriptorBudget - descriptorBudget / 8

/// Guards every inode's parent and name (read on the slow path, written by lookups and renames).
private let namesLock = ReadWriteLock()

/// An inode of the backing file system the kernel knows, with the kernel's lookup count. It holds an `O_PATH`
/// descriptor while the table's descriptor budget allows (the descriptor follows the inode through renames and
/// keeps it reachable after unlink); past the budget it is reached by its last known parent and name, checked
/// against its inode number on every use. File systems subclass it to keep their own per-inode state.
open class BackingInode {
    /// The `O_PATH | O_NOFOLLOW` descriptor, or -1 when the inode is reached by name (see `withDescriptor`).
    fileprivate var descriptor: Int32
    public private(set) var key: BackingInodeKey
    /// The `S_IFMT` bits: an inode never changes type.
    public let type: mode_t
    /// Guarded by the table's lock.
    fileprivate var lookups: UInt64 = 0
    /// The directory and name it was last seen under (guarded by `namesLock`); nil for the root.
    fileprivate var parent: BackingInode?
    fileprivate var name: [CChar] = []

    public init(fd: Int32, st: stat) {
        descriptor = fd
        key = BackingInodeKey(st)
        type = st.st_mode & S_IFMT
    }

    deinit { if descriptor >= 0 { close(descriptor) } }

    public var isDirectory: Bool { type == S_IFDIR }
    public var isRegularFile: Bool { type == S_IFREG }
    public var isSymbolicLink: Bool { type == S_IFLNK }

    /// The inode number the kernel uses for this object: its address (the root is `FuseInode.root`).
    public var fuseInode: FuseInode { FuseInode(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())) }

    /// Calls `body` with an `O_PATH` descriptor of the inode, usable with `*at(fd, "", AT_EMPTY_PATH)` calls and
    /// as a directory fd. Inodes past the descriptor budget get a temporary one, opened through their parent and
    /// checked to be the same inode (ESTALE if the name now leads elsewhere, ENOENT if it is gone).
    @inline(__always)
    public func withDescriptor<R>(_ body: (Int32) throws(Errno) -> R) throws(Errno) -> R {
        let held = descriptor
        if held >= 0 { return try body(held) }
        let temporary = try openByName()
        defer { close(temporary) }
        return try body(temporary)
    }

    private func openByName() throws(Errno) -> Int32 {
        let (parent, name) = namesLock.withReadLock { (self.parent, self.name) }
        guard let parent, !name.isEmpty else { throw Errno(ESTALE) }
        let fd = try parent.withDescriptor { directory throws(Errno) in try syscallRetrying { openPath(directory, name) } }
        var st = stat()
        guard lstat(descriptor: fd, &st) == 0, BackingInodeKey(st) == key else {
            close(fd)
            throw Errno(ESTALE)
        }
        return fd
    }

    /// `lstat` of the backing inode.
    public func attributes() throws(Errno) -> stat {
        var st = stat()
        _ = try withDescriptor { fd throws(Errno) in try syscallRetrying { lstat(descriptor: fd, &st) } }
        return st
    }

    /// Calls `body` with "/proc/self/fd/N" for this inode: the way to open, chmod or set times on an `O_PATH` fd.
    public func withProcPath<R>(_ body: (UnsafePointer<CChar>) throws(Errno) -> R) throws(Errno) -> R {
        try withDescriptor { fd throws(Errno) in try FuseKit.withProcPath(fd, body) }
    }

    /// Reopens the inode for I/O.
    public func reopen(flags: Int32) throws(Errno) -> Int32 {
        try withProcPath { path throws(Errno) in try syscallRetrying { Glibc.open(path, flags & ~O_NOFOLLOW) } }
    }

    fileprivate func remember(parent: BackingInode, name: UnsafePointer<CChar>) {
        let copied = Array(UnsafeBufferPointer(start: name, count: strlen(name) + 1))
        namesLock.withWriteLock {
            self.parent = parent
            self.name = copied
        }
    }

    fileprivate func replace(fd newFD: Int32, st: stat) {
        if descriptor >= 0 {
            // Same descriptor number, new inode, in one step: a request using the number meanwhile sees the old
            // inode or the new one, never a closed (or reused) descriptor.
            _ = GNU.dup3(newFD, descriptor, flags: O_CLOEXEC)
            close(newFD)
        } else {
            descriptor = newFD
        }
        key = BackingInodeKey(st)
    }
}

/// An `O_PATH` descriptor naming `name` in `directory` (not following a final symlink); -1 and errno on failure.
private func openPath(_ directory: Int32, _ name: UnsafePointer<CChar>) -> Int32 {
    openat(directory, name, GNU.openPath | O_NOFOLLOW | O_CLOEXEC)
}

/// `lstat` of the inode an `O_PATH` descriptor names.
private func lstat(descriptor fd: Int32, _ st: inout stat) -> Int32 {
    fstatat(fd, "", &st, GNU.atEmptyPath | AT_SYMLINK_NOFOLLOW)
}

/// An `O_PATH` descriptor of the file an open descriptor refers to (wherever it lives now); -1 on failure.
public func pathDescriptor(of openFD: Int32) -> Int32 {
    withProcPath(openFD) { open($0, GNU.openPath | O_CLOEXEC) }
}

/// True for "." and "..", which READDIRPLUS lists without a lookup.
@inline(__always)
public func isDotOrDotDot(_ name: UnsafePointer<CChar>) -> Bool {
    name[0] == 0x2e && (name[1] == 0 || (name[1] == 0x2e && name[2] == 0))
}

/// "/proc/self/fd/N" without an allocation.
public func withProcPath<R, E: Error>(_ fd: Int32, _ body: (UnsafePointer<CChar>) throws(E) -> R) throws(E) -> R {
    let prefix: StaticString = "/proc/self/fd/"
    return try withUnsafeTemporaryAllocation(of: CChar.self, capacity: 32) { buffer throws(E) -> R in
        var length = 0
        prefix.withUTF8Buffer { for byte in $0 { buffer[length] = CChar(bitPattern: byte); length += 1 } }
        var digits = 1
        var rest = Int(fd) / 10
        while rest > 0 { digits += 1; rest /= 10 }
        var value = Int(fd)
        for position in stride(from: length + digits - 1, through: length, by: -1) {
            buffer[position] = CChar(48 + value % 10)
            value /= 10
        }
        buffer[length + digits] = 0
        return try body(UnsafePointer(buffer.baseAddress!))
    }
}

/// The kernel's inodes and the backing inodes behind them: one object per backing inode (so hard links share
/// it), counted by lookups, dropped when the kernel forgets it. Request paths read inodes without a lock: an
/// inode number is the object's address, valid as long as the kernel holds a lookup.
public final class InodeTable<Node: BackingInode> {
    public let root: Node
    private var nodes: [BackingInodeKey: Node] = [:]
    private let lock = ReadWriteLock()

    public init(root: Node) {
        self.root = root
    }

    /// The object behind a kernel inode number. Only valid for numbers this table handed out and the kernel has
    /// not forgotten.
    @inline(__always)
    public func node(_ inode: FuseInode) -> Node {
        if inode == FuseInode.root { return root }
        return Unmanaged<Node>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(inode))!).takeUnretainedValue()
    }

    /// The inode number to give the kernel for `node`.
    public func fuseInode(_ node: Node) -> FuseInode {
        node === root ? FuseInode.root : node.fuseInode
    }

    /// Whether a new file's inode would keep a descriptor (past the files' share it is reached by name): callers
    /// that must make one first (from an open file) can skip it.
    public var hasRoomForFileDescriptor: Bool { lock.withReadLock { descriptorsHeld < fileDescriptorShare } }

    /// Descriptors held by inodes; past `descriptorBudget`, new inodes are reached by name.
    private var descriptorsHeld = 0
    /// Inodes reached by name (no descriptor).
    private var reachedByName = 0
    /// Looks up `name` in `parent` on the backing file system and counts one kernel lookup of the result.
    /// `make` builds the object for a backing inode seen for the first time; it owns the given descriptor.
    public func lookup(in parent: Node, name: UnsafePointer<CChar>,
                       make: (Int32, stat) throws(Errno) -> Node) throws(Errno) -> (Node, stat) {
        var st = stat()
        let held = lock.withReadLock { descriptorsHeld }
        func openDescriptor() throws(Errno) -> Int32 {
            try parent.withDescriptor { directory throws(Errno) -> Int32 in
                let opened = openPath(directory, name)
                if opened < 0 && (errno == EMFILE || errno == ENFILE) { return -1 }
                if opened < 0 { throw Errno.current }
                return opened
            }
        }
        var fd: Int32 = -1
        if held < fileDescriptorShare { fd = try openDescriptor() }
        if fd >= 0 {
            guard lstat(descriptor: fd, &st) == 0 else {
                let error = Errno.current
                close(fd)
                throw error
            }
        } else {
            _ = try parent.withDescriptor { directory throws(Errno) in
                try syscallRetrying { fstatat(directory, name, &st, AT_SYMLINK_NOFOLLOW) }
            }
            // The part of the budget kept for directories.
            if held < descriptorBudget && st.st_mode & S_IFMT == S_IFDIR {
                fd = try openDescriptor()
                var opened = stat()
                if fd >= 0 && (lstat(descriptor: fd, &opened) != 0 || BackingInodeKey(opened) != BackingInodeKey(st)) {
                    close(fd)
                    fd = -1
                } else if fd >= 0 {
                    st = opened
                }
            }
        }
        return (try adopt(fd: fd, st: st, parent: parent, name: name, make: make), st)
    }

    /// Counts one kernel lookup of the backing inode `st` describes, found as `name` in `parent`. Takes over `fd`
    /// (an `O_PATH` descriptor of it, or -1).
    public func adopt(fd: Int32, st: stat, parent: Node, name: UnsafePointer<CChar>,
                      make: (Int32, stat) throws(Errno) -> Node) throws(Errno) -> Node {
        let key = BackingInodeKey(st)
        if key == root.key {
            if fd >= 0 { close(fd) }
            return root
        }
        let node = try lock.withWriteLock { () throws(Errno) -> Node in
            // The same inode number with another type is a new inode (the old one lost its last name meanwhile).
            if let known = nodes[key], known.type == st.st_mode & S_IFMT {
                if fd >= 0 { close(fd) }
                known.lookups += 1
                return known
            }
            var fd = fd
            if fd >= 0 && descriptorsHeld >= (st.st_mode & S_IFMT == S_IFDIR ? descriptorBudget : fileDescriptorShare) {
                close(fd)
                fd = -1
            }
            let created: Node
            do throws(Errno) { created = try make(fd, st) } catch { if fd >= 0 { close(fd) }; throw error }
            created.lookups = 1
            if fd >= 0 { descriptorsHeld += 1 } else { reachedByName += 1 }
            // The kernel's lookups own the object (released when they reach 0), not the index: the index entry may
            // be replaced (a reused inode number, an OVE1 write-back) while the kernel still holds this address.
            _ = Unmanaged.passRetained(created)
            nodes[key] = created
            return created
        }
        // Only inodes without a descriptor are reached by name; the others need neither (and 47,000 cached inodes
        // would otherwise carry 47,000 name arrays).
        if node.descriptor < 0 { node.remember(parent: parent, name: name) }
        return node
    }

    /// Before `name` in `parent` is unlinked or renamed over: if the kernel knows that inode only by name, give it a
    /// descriptor, so it stays reachable after it loses its name (the kernel still sends it requests, for example
    /// the writeback cache flushing its times). Costs nothing while every inode has a descriptor.
    public func keepReachable(_ name: UnsafePointer<CChar>, in parent: Node) {
        guard lock.withReadLock({ reachedByName > 0 }) else { return }
        guard let fd = try? parent.withDescriptor({ directory throws(Errno) in try syscallRetrying { openPath(directory, name) } })
        else { return }
        var st = stat()
        guard lstat(descriptor: fd, &st) == 0 else { close(fd); return }
        let attached: Bool = lock.withWriteLock {
            guard let node = nodes[BackingInodeKey(st)], node.descriptor < 0 else { return false }
            node.descriptor = fd
            descriptorsHeld += 1
            reachedByName -= 1
            return true
        }
        if !attached { close(fd) }
    }

    /// After a rename: the inode now named `name` in `parent` (if the kernel knows it) is reached by that name.
    public func renamed(to name: UnsafePointer<CChar>, in parent: Node) {
        var st = stat()
        guard (try? parent.withDescriptor({ directory throws(Errno) in
            try syscallRetrying { fstatat(directory, name, &st, AT_SYMLINK_NOFOLLOW) }
        })) != nil else { return }
        guard let node = lock.withReadLock({ nodes[BackingInodeKey(st)] }), node.descriptor < 0 else { return }
        node.remember(parent: parent, name: name)
    }

    public func forget(_ inode: FuseInode, lookups: UInt64) {
        guard inode != FuseInode.root else { return }
        let node = self.node(inode)
        let gone: Bool = lock.withWriteLock {
            guard node.lookups > 0 else { return false }
            node.lookups -= min(lookups, node.lookups)
            guard node.lookups == 0 else { return false }
            if nodes[node.key] === node { nodes[node.key] = nil }
            if node.descriptor >= 0 { descriptorsHeld -= 1 } else { reachedByName -= 1 }
            return true
        }
        if gone { Unmanaged.passUnretained(node).release() }
    }

    /// The backing inode behind `node` was replaced (written to a new file, renamed over the old one): follow it.
    public func replaceBackingInode(of node: Node, fd newFD: Int32, st: stat) {
        lock.withWriteLock {
            if nodes[node.key] === node { nodes[node.key] = nil }
            if node.descriptor < 0 { descriptorsHeld += 1; reachedByName -= 1 }
            node.replace(fd: newFD, st: st)
            // Someone may have looked the new inode up already (and owns that entry): then leave it.
            if node !== root && nodes[node.key] == nil { nodes[node.key] = node }
        }
    }

    /// Backing inodes the kernel currently holds.
    public var count: Int { lock.withReadLock { nodes.count } }
}

/// Locks shared by many objects, picked by the object's address: per-object state guarded without a lock
/// allocation per object (inode tables hold tens of thousands of them). Critical sections must be short.
public enum StripedLocks {
    private static let stripes: [ReadWriteLock] = (0..<64).map { _ in ReadWriteLock() }

    @inline(__always)
    public static func lock(for object: AnyObject) -> ReadWriteLock {
        let address = UInt(bitPattern: ObjectIdentifier(object).hashValue)
        return stripes[Int((address >> 4) & 63)]
    }
}

/// A reader-writer lock around pthread_rwlock_t, heap-allocated so its address never moves.
public final class ReadWriteLock {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>
    public init() {
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(lock, nil)
    }
    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }
    @inline(__always) public func withReadLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
    @inline(__always) public func withWriteLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}

// MARK: Operations on backing inodes, shared by file systems that mirror a backing directory

public extension BackingInode {
    /// Applies mode, owner and times (not size: that is the file system's business) to the backing inode, through
    /// `openFD` when the request came with an open file.
    func apply(_ changes: AttributeChanges, openFD: Int32?) throws(Errno) {
        if let mode = changes.mode {
            if let openFD {
                _ = try syscallRetrying { fchmod(openFD, mode) }
            } else if !isSymbolicLink {
                _ = try withProcPath { path throws(Errno) in try syscallRetrying { chmod(path, mode) } }
            }
        }
        if changes.uid != nil || changes.gid != nil {
            let uid = changes.uid ?? uid_t.max
            let gid = changes.gid ?? gid_t.max
            if let openFD {
                // The open file: no name to resolve for an inode past the descriptor budget (tar's fchown).
                _ = try syscallRetrying { fchown(openFD, uid, gid) }
            } else {
                _ = try withDescriptor { fd throws(Errno) in try syscallRetrying { fchownat(fd, "", uid, gid, GNU.atEmptyPath | AT_SYMLINK_NOFOLLOW) } }
            }
        }
        if let times = changes.times {
            var pair = [times.access, times.modification]
            if let openFD {
                _ = try syscallRetrying { futimens(openFD, &pair) }
            } else {
                // On the O_PATH descriptor itself: no walk of a /proc path (the writeback cache sends times often).
                _ = try withDescriptor { fd throws(Errno) in try syscallRetrying { utimensat(fd, "", &pair, GNU.atEmptyPath | AT_SYMLINK_NOFOLLOW) } }
            }
        }
    }

    /// Adds a hard link to this inode as `name` in `directory`.
    func link(into directory: BackingInode, name: UnsafePointer<CChar>) throws(Errno) {
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link works for everyone else (but follows symlinks).
        try withDescriptor { fd throws(Errno) in
            try directory.withDescriptor { target throws(Errno) in
                if linkat(fd, "", target, name, GNU.atEmptyPath) == 0 { return }
                let first = Errno.current
                guard first == .noEntry || first == .permissionDenied, !isSymbolicLink else { throw first }
                _ = try FuseKit.withProcPath(fd) { path throws(Errno) in
                    try syscallRetrying { linkat(AT_FDCWD, path, target, name, AT_SYMLINK_FOLLOW) }
                }
            }
        }
    }

    /// The target of a symbolic link, NUL-terminated in `buffer`.
    func readLink(into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno) {
        guard buffer.count > 1 else { throw .invalid }
        let n = try withDescriptor { fd throws(Errno) in try syscallRetrying { readlinkat(fd, "", buffer.baseAddress!, buffer.count - 1) } }
        buffer[n] = 0
    }
}

/// An open directory that can be listed from any offset the kernel passes back (each entry's `d_off`).
public final class DirectoryStream {
    private let directory: OpaquePointer
    /// The offset the next `readdir` continues from; -1 when unknown (an entry was read but not delivered).
    private var position: Int64 = 0

    public init(_ inode: BackingInode) throws(Errno) {
        let fd = try inode.withDescriptor { directory throws(Errno) in
            try syscallRetrying { openat(directory, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        }
        guard let directory = fdopendir(fd) else {
            let error = Errno.current
            close(fd)
            throw error
        }
        self.directory = directory
    }

    deinit { closedir(directory) }

    public var fd: Int32 { dirfd(directory) }

    /// Calls `body` for each entry after `offset` with (name, backing inode number, type bits, next offset) until
    /// it returns false (the entry was not taken) or the directory ends.
    public func list(from offset: Int64,
                     _ body: (UnsafePointer<CChar>, UInt64, mode_t, Int64) throws(Errno) -> Bool) throws(Errno) {
        if offset != position {
            if offset == 0 { rewinddir(directory) } else { seekdir(directory, Int(offset)) }
            position = offset
        }
        while true {
            errno = 0
            guard let entry = readdir(directory) else {
                if errno != 0 { throw Errno.current }
                return
            }
            let next = Int64(entry.pointee.d_off)
            let type = mode_t(entry.pointee.d_type) << 12
            let inode = UInt64(entry.pointee.d_ino)
            // Unknown until the entry is taken: an error in `body` must make the next call seek back to it.
            position = -1
            let taken = try withUnsafePointer(to: entry.pointee.d_name) { raw throws(Errno) -> Bool in
                try raw.withMemoryRebound(to: CChar.self, capacity: 256) { name throws(Errno) -> Bool in
                    try body(name, inode, type, next)
                }
            }
            guard taken else { return }
            position = next
        }
    }
}
