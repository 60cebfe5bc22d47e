import FuseKit
import VikingCrypto
import VikingFormat
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// Handles given to libfuse as `fh`: a retained object's address.
class Handle {}

final class FileHandle: Handle {
    let node: FileNode
    let writable: Bool
    init(node: FileNode, writable: Bool) {
        self.node = node
        self.writable = writable
    }
}

final class DirectoryHandle: Handle {
    let directory: OpaquePointer
    let isRoot: Bool
    init(directory: OpaquePointer, isRoot: Bool) {
        self.directory = directory
        self.isRoot = isRoot
    }
    deinit { closedir(directory) }
}

@inline(__always)
private func handleObject(_ raw: UInt64) -> Handle? {
    guard let pointer = UnsafeRawPointer(bitPattern: UInt(raw)) else { return nil }
    return Unmanaged<Handle>.fromOpaque(pointer).takeUnretainedValue()
}

@inline(__always)
private func retain(_ handle: Handle) -> UInt64 {
    UInt64(UInt(bitPattern: Unmanaged.passRetained(handle).toOpaque()))
}

/// The encrypted overlay: every account's subtree sealed under its own key, legacy plaintext read-only,
/// names, sizes and the tree's shape passed through. See docs/format.md and docs/threat-model.md.
public final class VikingFileSystem: FuseFileSystem {
    let context: FileSystemContext
    private let writebackCache: Bool
    private let attributeTimeout: Double
    private let entryTimeout: Double

    private var nodes: [NodeKey: FileNode] = [:]
    private let nodesLock = ReadWriteLock()
    private let probes = ProbeCache()

    public init(configuration: VikingFSConfiguration) throws(Errno) {
        let fd = Glibc.open(configuration.backingPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .current }
        context = FileSystemContext(rootFD: fd, configuration: configuration)
        writebackCache = configuration.writebackCache && !configuration.readOnly
        attributeTimeout = configuration.attributeTimeout
        entryTimeout = configuration.entryTimeout
    }

    public func initialize(settings: inout FuseInitSettings) {
        settings.writebackCache = writebackCache
        settings.attributeTimeout = attributeTimeout
        settings.entryTimeout = entryTimeout
        settings.useInodeNumbers = true
        settings.hardRemove = true
        settings.nullPathOK = true
    }

    public func destroy() {
        // Dirty OVE1 contents are committed on flush/release; nothing is buffered beyond that.
        close(context.rootFD)
    }

    // MARK: Names and accounts

    /// The account whose key seals `path`; a single component is an account only when it is a directory.
    private func account(of path: FusePath, isDirectory: Bool) -> String {
        let relative = path.relativeString
        if !relative.contains("/") { return isDirectory ? Account.of(path: relative) : Account.system }
        return Account.of(path: relative)
    }

    private func isKeyCheck(_ path: FusePath) -> Bool {
        strcmp(path.cString, "/" + KeyCheck.fileName) == 0
    }

    /// True when the last component is one of our temporary names, which the mount never shows.
    private func isHidden(_ path: FusePath) -> Bool {
        let c = path.cString
        var last = c
        var p = c
        while p.pointee != 0 {
            if p.pointee == 0x2f { last = p + 1 }
            p += 1
        }
        return strncmp(last, TemporaryName.prefix, TemporaryName.prefix.utf8.count) == 0
    }

    private func requireVisible(_ path: FusePath) throws(Errno) {
        if isHidden(path) { throw .noEntry }
    }

    private func requireWritable() throws(Errno) {
        if context.readOnly { throw .readOnlyFileSystem }
    }

    private func lstatBacking(_ path: FusePath) throws(Errno) -> stat {
        var st = stat()
        _ = try syscallRetrying { fstatat(context.rootFD, path.relative, &st, AT_SYMLINK_NOFOLLOW) }
        return st
    }

    private func chownToCaller(_ path: FusePath) {
        guard geteuid() == 0 else { return }
        let caller = FuseCaller.current
        _ = fchownat(context.rootFD, path.relative, caller.uid, caller.gid, AT_SYMLINK_NOFOLLOW)
    }

    // MARK: Nodes

    /// Opens (or joins) the node of a backing regular file.
    private func acquireNode(_ path: FusePath) throws(Errno) -> FileNode {
        var fd = openat(context.rootFD, path.relative, (context.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOFOLLOW)
        var writableFD = !context.readOnly
        if fd < 0 && (errno == EACCES || errno == EROFS || errno == ETXTBSY || errno == EPERM) && !context.readOnly {
            fd = openat(context.rootFD, path.relative, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            writableFD = false
        }
        guard fd >= 0 else {
            if errno == ELOOP { throw .invalid }
            throw .current
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = Errno.current; close(fd); throw e }
        guard (st.st_mode & S_IFMT) == S_IFREG else { close(fd); throw (st.st_mode & S_IFMT) == S_IFDIR ? .isDirectory : .invalid }
        let key = NodeKey(st)
        if let existing = joinExisting(key) { close(fd); return existing }
        let loaded: FileNode
        do {
            loaded = try FileNode.load(fd: fd, st: st, writableFD: writableFD, account: Account.ofFile(path: path.relativeString),
                                       displayPath: path.relativeString, context: context)
        } catch {
            close(fd)
            throw error
        }
        return insert(loaded)
    }

    private func joinExisting(_ key: NodeKey) -> FileNode? {
        nodesLock.withWriteLock {
            guard let node = nodes[key] else { return nil }
            node.openCount += 1
            return node
        }
    }

    /// Inserts a freshly loaded node, or joins one another thread inserted meanwhile (ours is then dropped).
    private func insert(_ node: FileNode) -> FileNode {
        nodesLock.withWriteLock {
            if let raced = nodes[node.key] {
                raced.openCount += 1
                return raced
            }
            node.openCount = 1
            nodes[node.key] = node
            return node
        }
    }

    private func releaseNode(_ node: FileNode) {
        nodesLock.withWriteLock {
            node.openCount -= 1
            if node.openCount == 0, nodes[node.key] === node { nodes[node.key] = nil }
        }
    }

    private func openNodeAttributes(_ st: stat) -> stat? {
        let node = nodesLock.withReadLock { nodes[NodeKey(st)] }
        return node?.presentedAttributes(st)
    }

    private func commit(_ node: FileNode) throws(Errno) {
        guard node.kind == .ove1, node.ove1Dirty else { return }
        guard let moved = try node.commitOVE1(context: context) else { return }
        nodesLock.withWriteLock {
            if nodes[moved.old] === node {
                nodes[moved.old] = nil
                nodes[moved.new] = node
            }
        }
    }

    private func fileHandle(_ raw: UInt64) throws(Errno) -> FileHandle {
        guard let handle = handleObject(raw) as? FileHandle else { throw .badFile }
        return handle
    }

    // MARK: Attributes

    public func getattr(_ path: FusePath?, handle: UInt64?) throws(Errno) -> stat {
        if let handle, let file = handleObject(handle) as? FileHandle {
            var st = stat()
            _ = try syscallRetrying { fstat(file.node.fd, &st) }
            return file.node.presentedAttributes(st)
        }
        guard let path else { throw .badFile }
        try requireVisible(path)
        let st = try lstatBacking(path)
        guard (st.st_mode & S_IFMT) == S_IFREG else { return st }
        if let open = openNodeAttributes(st) { return open }
        return presentedAttributes(of: path, st)
    }

    /// Attributes of a file that is not open: the format decides the plaintext size.
    private func presentedAttributes(of path: FusePath, _ st: stat) -> stat {
        var result = st
        let (kind, shift) = probes.lookup(st) ?? probe(path, st)
        switch kind {
        case .empty: result.st_size = 0
        case .legacy: result.st_mode &= ~mode_t(0o222)
        case .ove1: result.st_size = off_t(max(0, Int64(st.st_size) - Int64(OVE1.overhead)))
        case .native: result.st_size = off_t(NativeLayout(blockShift: shift).plaintextSize(forBacking: Int64(st.st_size)))
        }
        return result
    }

    private func probe(_ path: FusePath, _ st: stat) -> (FileKind, UInt8) {
        guard st.st_size > 0 else { return (.empty, 0) }
        let fd = openat(context.rootFD, path.relative, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return (.legacy, 0) }
        defer { close(fd) }
        var prefix = [UInt8](repeating: 0, count: 6)
        let n = pread(fd, &prefix, 6, 0)
        let kind = FileKind.classify(prefix: Array(prefix.prefix(max(0, n))), size: Int64(st.st_size))
        var shift = NativeFormat.defaultBlockShift
        if kind == .native && n >= 6 && NativeFormat.blockShiftRange.contains(prefix[5]) { shift = prefix[5] }
        probes.store(st, kind: kind, shift: shift)
        return (kind, shift)
    }

    public func chmod(_ path: FusePath?, mode: mode_t, handle: UInt64?) throws(Errno) {
        try requireWritable()
        if let handle { let fd = try fileHandle(handle).node.fd; _ = try syscallRetrying { fchmod(fd, mode) }; return }
        guard let path else { throw .badFile }
        try requireVisible(path)
        _ = try syscallRetrying { fchmodat(context.rootFD, path.relative, mode, 0) }
    }

    public func chown(_ path: FusePath?, uid: uid_t, gid: gid_t, handle: UInt64?) throws(Errno) {
        try requireWritable()
        if let handle { let fd = try fileHandle(handle).node.fd; _ = try syscallRetrying { fchown(fd, uid, gid) }; return }
        guard let path else { throw .badFile }
        try requireVisible(path)
        _ = try syscallRetrying { fchownat(context.rootFD, path.relative, uid, gid, AT_SYMLINK_NOFOLLOW) }
    }

    public func utimens(_ path: FusePath?, times: UnsafePointer<timespec>?, handle: UInt64?) throws(Errno) {
        try requireWritable()
        if let handle { let fd = try fileHandle(handle).node.fd; _ = try syscallRetrying { futimens(fd, times) }; return }
        guard let path else { throw .badFile }
        try requireVisible(path)
        _ = try syscallRetrying { utimensat(context.rootFD, path.relative, times, AT_SYMLINK_NOFOLLOW) }
    }

    public func truncate(_ path: FusePath?, size: Int64, handle: UInt64?) throws(Errno) {
        try requireWritable()
        if let handle {
            try fileHandle(handle).node.truncate(to: size, context: context)
            return
        }
        guard let path else { throw .badFile }
        try requireVisible(path)
        if isKeyCheck(path) { throw .readOnlyFileSystem }
        let node = try acquireNode(path)
        defer { releaseNode(node) }
        try node.truncate(to: size, context: context)
        try commit(node)
    }

    public func access(_ path: FusePath, mask: Int32) throws(Errno) {
        try requireVisible(path)
        let st = try lstatBacking(path)
        if mask & W_OK != 0 {
            if context.readOnly { throw .readOnlyFileSystem }
            if (st.st_mode & S_IFMT) == S_IFREG && presentedAttributes(of: path, st).st_mode & 0o222 == 0 && st.st_mode & 0o222 != 0 {
                throw .readOnlyFileSystem
            }
        }
    }

    public func statfs(_ path: FusePath) throws(Errno) -> statvfs {
        var st = statvfs()
        _ = try syscallRetrying { fstatvfs(context.rootFD, &st) }
        return st
    }

    // MARK: Files

    public func open(_ path: FusePath, flags: Int32) throws(Errno) -> OpenResult {
        try requireVisible(path)
        let wantsWrite = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
        if wantsWrite {
            try requireWritable()
            if isKeyCheck(path) { throw .readOnlyFileSystem }
        }
        let node = try acquireNode(path)
        do throws(Errno) {
            if wantsWrite && node.kind == .legacy { throw Errno.readOnlyFileSystem }
            if flags & O_TRUNC != 0 {
                try node.truncate(to: 0, context: context)
            }
        } catch {
            releaseNode(node)
            throw error
        }
        return openResult(FileHandle(node: node, writable: wantsWrite))
    }

    public func create(_ path: FusePath, mode: mode_t, flags: Int32) throws(Errno) -> OpenResult {
        try requireWritable()
        if isHidden(path) || isKeyCheck(path) { throw .permissionDenied }
        let fd = try syscallRetrying {
            openat(context.rootFD, path.relative, O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW | (flags & O_EXCL), mode)
        }
        if geteuid() == 0 {
            let caller = FuseCaller.current
            _ = fchown(fd, caller.uid, caller.gid)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = Errno.current; close(fd); throw e }
        if st.st_size > 0 {
            // Lost a race with another creator: it exists now, so this is an open.
            close(fd)
            return try open(path, flags: flags & ~(O_CREAT | O_EXCL))
        }
        let account = Account.ofFile(path: path.relativeString)
        let node: FileNode
        do throws(Errno) {
            switch context.newFileFormat {
            case .native:
                let cipher = try context.createNativeCipher(account: account)
                try pwriteArray(fd, cipher.header.serialized(), at: 0)
                node = FileNode(key: NodeKey(st), fd: fd, writableFD: true, account: account, displayPath: path.relativeString,
                                kind: .native, cipher: cipher, size: 0, ove1Plaintext: [])
            case .ove1:
                let envelope: [UInt8]
                do {
                    envelope = try SealedFile.sealWhole([], kind: .ove1, account: account, keyRing: context.keyRing)
                } catch {
                    Log.error("\(path.relativeString): cannot seal: \(error)")
                    throw Errno.io
                }
                try pwriteArray(fd, envelope, at: 0)
                node = FileNode(key: NodeKey(st), fd: fd, writableFD: true, account: account, displayPath: path.relativeString,
                                kind: .ove1, cipher: nil, size: 0, ove1Plaintext: [])
            }
        } catch {
            close(fd)
            unlinkat(context.rootFD, path.relative, 0)
            throw error
        }
        return openResult(FileHandle(node: insert(node), writable: true))
    }

    /// OVE1 files bypass the page cache: their size limit (EFBIG) and write-back errors must reach the writing
    /// call, not surface later from the kernel's background writeback. Native files keep their cached pages
    /// across opens: every write goes through this mount, so cached pages stay valid.
    private func openResult(_ file: FileHandle) -> OpenResult {
        let ove1 = file.node.kind == .ove1 || (file.node.kind == .empty && context.newFileFormat == .ove1)
        return OpenResult(handle: retain(file), directIO: ove1, keepCache: !ove1)
    }

    public func read(_ path: FusePath?, handle: UInt64, into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try fileHandle(handle).node.read(into: buffer, offset: offset)
    }

    public func write(_ path: FusePath?, handle: UInt64, from buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try fileHandle(handle).node.write(buffer, offset: offset, context: context)
    }

    public func flush(_ path: FusePath?, handle: UInt64) throws(Errno) {
        let file = try fileHandle(handle)
        try commit(file.node)
    }

    public func fsync(_ path: FusePath?, handle: UInt64, dataOnly: Bool) throws(Errno) {
        let file = try fileHandle(handle)
        try commit(file.node)
        try file.node.sync(dataOnly: dataOnly)
    }

    public func release(_ path: FusePath?, handle: UInt64) {
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(handle)) else { return }
        guard let file = Unmanaged<Handle>.fromOpaque(pointer).takeRetainedValue() as? FileHandle else { return }
        do { try commit(file.node) } catch {
            Log.error("\(file.node.displayPath): changes could not be written back on close: \(error)")
        }
        releaseNode(file.node)
    }

    public func fallocate(_ path: FusePath?, mode: Int32, offset: Int64, length: Int64, handle: UInt64) throws(Errno) {
        try requireWritable()
        guard mode == 0 else { throw .notSupported }
        guard offset >= 0, length > 0 else { throw .invalid }
        try fileHandle(handle).node.allocate(offset: offset, length: length, context: context)
    }

    // MARK: Directories and names

    public func mkdir(_ path: FusePath, mode: mode_t) throws(Errno) {
        try requireWritable()
        if isHidden(path) { throw .permissionDenied }
        _ = try syscallRetrying { mkdirat(context.rootFD, path.relative, mode) }
        chownToCaller(path)
    }

    public func mknod(_ path: FusePath, mode: mode_t, device: dev_t) throws(Errno) {
        try requireWritable()
        if isHidden(path) { throw .permissionDenied }
        // Regular files go through create (so they get a header); FIFOs and sockets hold no data.
        guard (mode & S_IFMT) == S_IFIFO || (mode & S_IFMT) == S_IFSOCK else { throw .permissionDenied }
        _ = try syscallRetrying { mknodat(context.rootFD, path.relative, mode, device) }
        chownToCaller(path)
    }

    public func rmdir(_ path: FusePath) throws(Errno) {
        try requireWritable()
        try requireVisible(path)
        if unlinkat(context.rootFD, path.relative, AT_REMOVEDIR) == 0 { return }
        let failure = Errno.current
        // Hidden leftovers of an interrupted write-back would make a directory look non-empty forever.
        guard failure == Errno(ENOTEMPTY) else { throw failure }
        removeStaleTemporaries(in: path.relative)
        _ = try syscallRetrying { unlinkat(context.rootFD, path.relative, AT_REMOVEDIR) }
    }

    public func unlink(_ path: FusePath) throws(Errno) {
        try requireWritable()
        try requireVisible(path)
        if isKeyCheck(path) { throw .permissionDenied }
        _ = try syscallRetrying { unlinkat(context.rootFD, path.relative, 0) }
    }

    public func symlink(target: FusePath, at path: FusePath) throws(Errno) {
        try requireWritable()
        if isHidden(path) || isKeyCheck(path) { throw .permissionDenied }
        _ = try syscallRetrying { symlinkat(target.cString, context.rootFD, path.relative) }
        chownToCaller(path)
    }

    public func readlink(_ path: FusePath, into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno) {
        try requireVisible(path)
        guard buffer.count > 0 else { throw .invalid }
        let n = try syscallRetrying { readlinkat(context.rootFD, path.relative, buffer.baseAddress!, buffer.count - 1) }
        buffer[n] = 0
    }

    public func rename(_ from: FusePath, to: FusePath, flags: UInt32) throws(Errno) {
        try requireWritable()
        try requireVisible(from)
        if isHidden(to) || isKeyCheck(from) || isKeyCheck(to) { throw .permissionDenied }
        let source = try lstatBacking(from)
        let sourceIsDirectory = (source.st_mode & S_IFMT) == S_IFDIR
        // Ciphertext never crosses key domains: mv falls back to copy + delete, which re-seals.
        guard account(of: from, isDirectory: sourceIsDirectory) == account(of: to, isDirectory: sourceIsDirectory) else {
            throw .crossDevice
        }
        if flags & GNU.renameExchange != 0 {
            let target = try lstatBacking(to)
            let targetIsDirectory = (target.st_mode & S_IFMT) == S_IFDIR
            guard account(of: to, isDirectory: targetIsDirectory) == account(of: from, isDirectory: targetIsDirectory) else {
                throw .crossDevice
            }
        }
        if flags == 0 {
            _ = try syscallRetrying { renameat(context.rootFD, from.relative, context.rootFD, to.relative) }
        } else {
            _ = try syscallRetrying { GNU.renameat2(context.rootFD, from.relative, context.rootFD, to.relative, flags: flags) }
        }
    }

    public func link(_ from: FusePath, to: FusePath) throws(Errno) {
        try requireWritable()
        try requireVisible(from)
        if isHidden(to) || isKeyCheck(from) || isKeyCheck(to) { throw .permissionDenied }
        guard Account.ofFile(path: from.relativeString) == Account.ofFile(path: to.relativeString) else { throw .crossDevice }
        _ = try syscallRetrying { linkat(context.rootFD, from.relative, context.rootFD, to.relative, 0) }
    }

    public func opendir(_ path: FusePath) throws(Errno) -> UInt64 {
        try requireVisible(path)
        let fd = try syscallRetrying { openat(context.rootFD, path.relative, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard let directory = fdopendir(fd) else { let e = Errno.current; close(fd); throw e }
        return retain(DirectoryHandle(directory: directory, isRoot: path.isRoot))
    }

    public func readdir(_ path: FusePath?, handle: UInt64, filler: DirectoryFiller) throws(Errno) {
        guard let directory = handleObject(handle) as? DirectoryHandle else { throw .badFile }
        rewinddir(directory.directory)
        let prefixLength = TemporaryName.prefix.utf8.count
        let fd = dirfd(directory.directory)
        while let entry = Glibc.readdir(directory.directory) {
            let type = mode_t(entry.pointee.d_type) << 12
            let inode = UInt64(entry.pointee.d_ino)
            let keepGoing = withUnsafePointer(to: entry.pointee.d_name) { raw in
                raw.withMemoryRebound(to: CChar.self, capacity: 256) { name -> Bool in
                    if strncmp(name, TemporaryName.prefix, prefixLength) == 0 {
                        removeIfStale(directoryFD: fd, name: name)
                        return true
                    }
                    return filler.add(name, inode: inode, type: type)
                }
            }
            if !keepGoing { break }
        }
    }

    public func releasedir(_ path: FusePath?, handle: UInt64) {
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(handle)) else { return }
        Unmanaged<Handle>.fromOpaque(pointer).release()
    }

    public func fsyncdir(_ path: FusePath?, handle: UInt64, dataOnly: Bool) throws(Errno) {
        guard let directory = handleObject(handle) as? DirectoryHandle else { throw .badFile }
        _ = try syscallRetrying { Glibc.fsync(dirfd(directory.directory)) }
    }

    /// Removes temporary files older than this mount: leftovers of a crash during an OVE1 write-back.
    private func removeStaleTemporaries(in directory: UnsafePointer<CChar>) {
        let fd = openat(context.rootFD, directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0, let dir = fdopendir(fd) else { if fd >= 0 { close(fd) }; return }
        defer { closedir(dir) }
        while let entry = Glibc.readdir(dir) {
            withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { name in
                    if TemporaryName.isTemporary(String(cString: name)) { removeIfStale(directoryFD: fd, name: name) }
                }
            }
        }
    }

    /// A temporary file older than this mount is the leftover of a crash during an OVE1 write-back (the old
    /// envelope is still in place): remove it. Younger ones belong to a write-back in progress.
    private func removeIfStale(directoryFD: Int32, name: UnsafePointer<CChar>) {
        if strcmp(name, TemporaryName.rotationJournal) == 0 { return }
        var st = stat()
        guard fstatat(directoryFD, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mtim.tv_sec < context.startTime else { return }
        if unlinkat(directoryFD, name, 0) == 0 {
            Log.info("removed a stale temporary file \(String(cString: name)) left by an interrupted write-back")
        }
    }

    // MARK: Extended attributes (sealed like content)

    private func xattrAccount(_ path: FusePath) throws(Errno) -> String {
        let st = try lstatBacking(path)
        return account(of: path, isDirectory: (st.st_mode & S_IFMT) == S_IFDIR)
    }

    private func backingPath(_ path: FusePath) -> String {
        path.isRoot ? context.backingPath : context.backingPath + path.string
    }

    public func setxattr(_ path: FusePath, name: UnsafePointer<CChar>, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) {
        try requireWritable()
        try requireVisible(path)
        let visible = String(cString: name)
        guard let backingName = XattrCodec.backingName(for: visible) else { throw .notSupported }
        let key = try context.accountKey(try xattrAccount(path))
        let sealed: [UInt8]
        do { sealed = try XattrCodec.seal(value: Array(value), visibleName: visible, accountKey: key) } catch { throw .io }
        _ = try syscallRetrying { ExtendedAttributes.set(path: backingPath(path), name: backingName, value: sealed, size: sealed.count, flags: flags) }
    }

    public func getxattr(_ path: FusePath, name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try requireVisible(path)
        let visible = String(cString: name)
        // Other namespaces (security.*, system.posix_acl_*) are not supported, and saying so (rather than
        // "no such attribute") lets tools such as ls stop asking for every file.
        guard let backingName = XattrCodec.backingName(for: visible) else { throw .notSupported }
        let full = backingPath(path)
        let length = try syscallRetrying { ExtendedAttributes.get(path: full, name: backingName, into: nil, size: 0) }
        var sealed = [UInt8](repeating: 0, count: length)
        let got = try syscallRetrying { ExtendedAttributes.get(path: full, name: backingName, into: &sealed, size: length) }
        sealed.removeLast(length - got)
        // Every key of the ring, primary first: during a rotation some values are still under the old root key.
        let account = try xattrAccount(path)
        var opened: [UInt8]? = nil
        for index in context.keyRing.allKeys.indices {
            guard let key = try? context.keyRing.accountKey(account, keyIndex: index) else { continue }
            if let value = try? XattrCodec.open(sealed: sealed, visibleName: visible, accountKey: key) {
                opened = value
                break
            }
        }
        guard let value = opened else {
            Log.error("\(path.relativeString): extended attribute \(visible) fails authentication (EIO)")
            throw .io
        }
        if buffer.count == 0 { return value.count }
        guard buffer.count >= value.count else { throw .range }
        value.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: value.count) }
        return value.count
    }

    public func listxattr(_ path: FusePath, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try requireVisible(path)
        let full = backingPath(path)
        let length = try syscallRetrying { ExtendedAttributes.list(path: full, into: nil, size: 0) }
        var raw = [CChar](repeating: 0, count: max(length, 1))
        let got = try syscallRetrying { ExtendedAttributes.list(path: full, into: &raw, size: length) }
        var visible: [UInt8] = []
        var start = 0
        while start < got {
            let name = raw.withUnsafeBufferPointer { String(cString: $0.baseAddress! + start) }
            start += name.utf8.count + 1
            if let shown = XattrCodec.visibleName(fromBacking: name) { visible += Array(shown.utf8) + [0] }
        }
        if buffer.count == 0 { return visible.count }
        guard buffer.count >= visible.count else { throw .range }
        visible.withUnsafeBytes { if visible.count > 0 { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: visible.count) } }
        return visible.count
    }

    public func removexattr(_ path: FusePath, name: UnsafePointer<CChar>) throws(Errno) {
        try requireWritable()
        try requireVisible(path)
        guard let backingName = XattrCodec.backingName(for: String(cString: name)) else { throw .notSupported }
        _ = try syscallRetrying { ExtendedAttributes.remove(path: backingPath(path), name: backingName) }
    }
}

/// Remembers the format of files that are not open, so `ls -l` of a large tree does not open every file.
/// An entry is valid while the inode's ctime is unchanged; any write or rename updates ctime.
final class ProbeCache {
    private struct Entry {
        let ctimeSeconds: Int
        let ctimeNanoseconds: Int
        let kind: FileKind
        let shift: UInt8
    }
    private var entries: [NodeKey: Entry] = [:]
    private let lock = ReadWriteLock()
    private let capacity = 200_000

    func lookup(_ st: stat) -> (FileKind, UInt8)? {
        if st.st_size == 0 { return (.empty, 0) }
        let entry = lock.withReadLock { entries[NodeKey(st)] }
        guard let entry, entry.ctimeSeconds == st.st_ctim.tv_sec, entry.ctimeNanoseconds == st.st_ctim.tv_nsec else { return nil }
        return (entry.kind, entry.shift)
    }

    func store(_ st: stat, kind: FileKind, shift: UInt8) {
        lock.withWriteLock {
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[NodeKey(st)] = Entry(ctimeSeconds: st.st_ctim.tv_sec, ctimeNanoseconds: st.st_ctim.tv_nsec, kind: kind, shift: shift)
        }
    }
}
