import FuseKit
import VikingCrypto
import VikingFormat
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// A backing inode as the overlay sees it: its key domain, and the state shared by everyone who has it open.
final class VikingInode: BackingInode {
    /// The account whose key seals this inode's content and extended attributes (for a directory: also its
    /// children's). Fixed at first lookup; renames never move an inode between accounts.
    let account: String
    /// The key check in the backing root: readable, never writable or removable through the mount.
    let isKeyCheck: Bool
    /// Guards `openNode`, `openCount` and `probed` (a lock shared with other inodes: no allocation per inode).
    var state: ReadWriteLock { StripedLocks.lock(for: self) }
    /// The decrypting state of the file while any handle has it open.
    var openNode: FileNode?
    var openCount = 0
    /// The format of a file that is not open, so `ls -l` of a large tree does not open every file twice.
    var probed: Probe?

    /// Valid while the backing file keeps its inode number, size and modification time. Not the ctime: chmod,
    /// chown, utimes, link, unlink and rename change it without touching content, and the kernel's writeback cache
    /// follows every unlink with a SETATTR whose reply would otherwise re-read the header of a deleted file. A
    /// format changes only with content (a first write to an empty file, an OVE1 write-back to a new inode).
    struct Probe {
        let inode: ino_t
        let size: off_t
        let modified: timespec

        let kind: FileKind
        let shift: UInt8

        init(_ st: stat, kind: FileKind, shift: UInt8) {
            (inode, size, modified, self.kind, self.shift) = (st.st_ino, st.st_size, st.st_mtim, kind, shift)
        }

        func matches(_ st: stat) -> Bool {
            inode == st.st_ino && size == st.st_size
                && modified.tv_sec == st.st_mtim.tv_sec && modified.tv_nsec == st.st_mtim.tv_nsec
        }
    }

    init(fd: Int32, st: stat, account: String, isKeyCheck: Bool) {
        self.account = account
        self.isKeyCheck = isKeyCheck
        super.init(fd: fd, st: st)
    }
}

/// Handles given to the kernel as `fh`: a retained object's address.
final class FileHandle {
    let inode: VikingInode
    let node: FileNode
    let writable: Bool
    init(inode: VikingInode, node: FileNode, writable: Bool) {
        self.inode = inode
        self.node = node
        self.writable = writable
    }
}

@inline(__always)
private func object<T: AnyObject>(_ raw: UInt64, as type: T.Type) throws(Errno) -> T {
    guard let pointer = UnsafeRawPointer(bitPattern: UInt(raw)) else { throw .badFile }
    return Unmanaged<T>.fromOpaque(pointer).takeUnretainedValue()
}

@inline(__always)
private func retained(_ object: AnyObject) -> UInt64 {
    UInt64(UInt(bitPattern: Unmanaged.passRetained(object).toOpaque()))
}

/// The encrypted overlay: every account's subtree sealed under its own key, legacy plaintext read-only,
/// names, sizes and the tree's shape passed through. See docs/format.md and docs/threat-model.md.
///
/// Served through libfuse's low-level API: every inode the kernel knows is a `VikingInode` holding an `O_PATH`
/// descriptor of the backing inode, so requests need no path resolution and an inode stays reachable after
/// unlink or rename for as long as the kernel holds it.
public final class VikingFileSystem: FuseFileSystem {
    let context: FileSystemContext
    private let inodes: InodeTable<VikingInode>
    private let writebackCache: Bool
    private let readdirPlus: Bool
    private let extendedAttributes: Bool
    private let attributeTimeout: Double
    private let entryTimeout: Double
    private var settings = FuseInitSettings()

    public init(configuration: VikingFSConfiguration) throws(Errno) {
        let fd = Glibc.open(configuration.backingPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .current }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = Errno.current; close(fd); throw e }
        context = FileSystemContext(rootFD: fd, configuration: configuration)
        inodes = InodeTable(root: VikingInode(fd: fd, st: st, account: Account.system, isKeyCheck: false))
        writebackCache = configuration.writebackCache && !configuration.readOnly
        readdirPlus = configuration.readdirPlus
        extendedAttributes = configuration.extendedAttributes
        attributeTimeout = configuration.attributeTimeout
        entryTimeout = configuration.entryTimeout
    }

    public func initialize(settings: inout FuseInitSettings) {
        settings.writebackCache = writebackCache
        settings.readdirPlus = readdirPlus
        settings.extendedAttributes = extendedAttributes
        settings.attributeTimeout = attributeTimeout
        settings.entryTimeout = entryTimeout
        self.settings = settings
    }

    // MARK: Names and accounts

    /// The account of `name` in `parent`: a directory directly in the root is its own account (when the name is a
    /// valid account ID); anything else belongs to its parent's account, and files in the root to `_system`.
    private func account(in parent: VikingInode, name: UnsafePointer<CChar>, isDirectory: Bool) -> String {
        guard parent === inodes.root else { return parent.account }
        return isDirectory ? Account.of(path: String(cString: name)) : Account.system
    }

    private func isKeyCheck(_ parent: VikingInode, _ name: UnsafePointer<CChar>) -> Bool {
        parent === inodes.root && strcmp(name, KeyCheck.fileName) == 0
    }

    /// Our temporary names (OVE1 write-backs, the rotation journal), which the mount never shows.
    private func isHidden(_ name: UnsafePointer<CChar>) -> Bool {
        strncmp(name, TemporaryName.prefix, TemporaryName.prefix.utf8.count) == 0
    }

    private func requireWritable() throws(Errno) {
        if context.readOnly { throw .readOnlyFileSystem }
    }

    private func chownToCaller(_ parent: VikingInode, _ name: UnsafePointer<CChar>, _ caller: FuseCaller) {
        guard geteuid() == 0 else { return }
        _ = try? parent.withDescriptor { dir throws(Errno) in fchownat(dir, name, caller.uid, caller.gid, AT_SYMLINK_NOFOLLOW) }
    }

    private func node(_ inode: FuseInode) -> VikingInode { inodes.node(inode) }

    /// Looks `name` up on the backing file system and counts one kernel lookup of it.
    private func entry(_ parent: VikingInode, _ name: UnsafePointer<CChar>) throws(Errno) -> FuseEntry {
        let (inode, st) = try inodes.lookup(in: parent, name: name) { fd, st throws(Errno) in
            VikingInode(fd: fd, st: st, account: account(in: parent, name: name, isDirectory: (st.st_mode & S_IFMT) == S_IFDIR),
                        isKeyCheck: isKeyCheck(parent, name))
        }
        return FuseEntry(inode: inodes.fuseInode(inode), attributes: presentedAttributes(inode, st))
    }

    // MARK: Lookups and attributes

    public func lookup(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) -> FuseEntry {
        if isHidden(name) { throw .noEntry }
        return try entry(node(parent), name)
    }

    public func forget(_ inode: FuseInode, lookups: UInt64) {
        inodes.forget(inode, lookups: lookups)
    }

    public func getattr(_ inode: FuseInode, handle: UInt64?) throws(Errno) -> stat {
        let target = node(inode)
        // Only regular files' handles are FileHandles (directories have DirectoryStreams).
        if let handle, target.isRegularFile {
            let file = try object(handle, as: FileHandle.self)
            var st = stat()
            _ = try syscallRetrying { fstat(file.node.fd, &st) }
            return file.node.presentedAttributes(st)
        }
        // fstat(2) arrives without a handle; an open file answers through its descriptor (it may be unlinked, and
        // an inode past the descriptor budget could not be reached by name any more).
        if target.isRegularFile, let open = target.state.withReadLock({ target.openNode }) {
            var st = stat()
            _ = try syscallRetrying { fstat(open.fd, &st) }
            return open.presentedAttributes(st)
        }
        return presentedAttributes(target, try target.attributes())
    }

    /// What the mount shows of a backing inode: for regular files the plaintext size, and no write bits on legacy
    /// (unsealed) files, which are read-only.
    private func presentedAttributes(_ inode: VikingInode, _ st: stat) -> stat {
        guard inode.isRegularFile else { return st }
        let (open, probed) = inode.state.withReadLock { (inode.openNode, inode.probed) }
        if let open { return open.presentedAttributes(st) }
        let kind: FileKind
        let shift: UInt8
        if st.st_size == 0 {
            (kind, shift) = (.empty, 0)
        } else if let probed, probed.matches(st) {
            (kind, shift) = (probed.kind, probed.shift)
        } else {
            (kind, shift) = probe(inode, st)
        }
        var result = st
        switch kind {
        case .empty: result.st_size = 0
        case .legacy: result.st_mode &= ~mode_t(0o222)
        case .ove1: result.st_size = off_t(max(0, Int64(st.st_size) - Int64(OVE1.overhead)))
        case .native: result.st_size = off_t(NativeLayout(blockShift: shift).plaintextSize(forBacking: Int64(st.st_size)))
        }
        return result
    }

    /// Reads the first bytes of a file that is not open to learn its format (and block size).
    private func probe(_ inode: VikingInode, _ st: stat) -> (FileKind, UInt8) {
        guard let fd = try? inode.reopen(flags: O_RDONLY | O_CLOEXEC) else { return (.legacy, 0) }
        defer { close(fd) }
        var prefix = [UInt8](repeating: 0, count: 6)
        let n = pread(fd, &prefix, 6, 0)
        let kind = FileKind.classify(prefix: Array(prefix.prefix(max(0, n))), size: Int64(st.st_size))
        var shift = NativeFormat.defaultBlockShift
        if kind == .native && n >= 6 && NativeFormat.blockShiftRange.contains(prefix[5]) { shift = prefix[5] }
        inode.state.withWriteLock { inode.probed = VikingInode.Probe(st, kind: kind, shift: shift) }
        return (kind, shift)
    }

    public func setattr(_ inode: FuseInode, _ changes: AttributeChanges, handle: UInt64?) throws(Errno) -> stat {
        let target = node(inode)
        let file = target.isRegularFile ? try handle.map { raw throws(Errno) in try object(raw, as: FileHandle.self) } : nil
        let changesSomething = changes.mode != nil || changes.uid != nil || changes.gid != nil || changes.size != nil || changes.times != nil
        if changesSomething { try requireWritable() }
        let open = file?.node ?? (target.isRegularFile ? target.state.withReadLock { target.openNode } : nil)
        try target.apply(changes, openFD: open?.fd)
        if let size = changes.size {
            if let file {
                try file.node.truncate(to: size, context: context)
            } else {
                if target.isKeyCheck { throw .readOnlyFileSystem }
                guard target.isRegularFile else { throw target.isDirectory ? .isDirectory : .invalid }
                let opened = try acquire(target)
                defer { release(target, opened) }
                if opened.kind == .legacy { throw .readOnlyFileSystem }
                try opened.truncate(to: size, context: context)
                try commit(target, opened)
            }
        }
        return try getattr(inode, handle: handle)
    }

    public func access(_ inode: FuseInode, mask: Int32) throws(Errno) {
        let target = node(inode)
        if !context.kernelChecksPermissions && mask != F_OK && !target.isSymbolicLink {
            _ = try target.withProcPath { path throws(Errno) in try syscallRetrying { faccessat(AT_FDCWD, path, mask, 0) } }
        }
        if mask & W_OK != 0 {
            if context.readOnly { throw .readOnlyFileSystem }
            let st = try target.attributes()
            if target.isRegularFile && presentedAttributes(target, st).st_mode & 0o222 == 0 && st.st_mode & 0o222 != 0 {
                throw .readOnlyFileSystem
            }
        }
    }

    public func statfs(_ inode: FuseInode) throws(Errno) -> statvfs {
        var st = statvfs()
        _ = try syscallRetrying { fstatvfs(context.rootFD, &st) }
        return st
    }

    // MARK: Open files

    /// Opens (or joins) the decrypting state of a backing regular file. The loading (a header, or a whole OVE1
    /// envelope, opened and authenticated) happens outside the inode's lock, which other inodes share; if another
    /// opener installed its state meanwhile, that one is joined and this one dropped.
    private func acquire(_ inode: VikingInode) throws(Errno) -> FileNode {
        if let joined = join(inode) { return joined }
        var writableFD = !context.readOnly
        var fd: Int32 = -1
        if writableFD {
            do throws(Errno) { fd = try inode.reopen(flags: O_RDWR | O_CLOEXEC) } catch {
                guard [Errno(EACCES), .readOnlyFileSystem, Errno(ETXTBSY), .permissionDenied].contains(error) else { throw error }
                writableFD = false
            }
        }
        if fd < 0 { fd = try inode.reopen(flags: O_RDONLY | O_CLOEXEC) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = Errno.current; close(fd); throw e }
        let loaded: FileNode
        do throws(Errno) {
            loaded = try FileNode.load(fd: fd, st: st, writableFD: writableFD, account: inode.account, context: context)
        } catch {
            close(fd)
            throw error
        }
        return inode.state.withWriteLock {
            inode.openCount += 1
            if let raced = inode.openNode { return raced }
            inode.openNode = loaded
            return loaded
        }
    }

    private func join(_ inode: VikingInode) -> FileNode? {
        inode.state.withWriteLock {
            guard let open = inode.openNode else { return nil }
            inode.openCount += 1
            return open
        }
    }

    private func release(_ inode: VikingInode, _ node: FileNode) {
        inode.state.withWriteLock {
            inode.openCount -= 1
            if inode.openCount == 0, inode.openNode === node { inode.openNode = nil }
        }
    }

    /// Writes dirty OVE1 content back; the envelope is a new backing file renamed over the old one, which the
    /// inode then follows.
    private func commit(_ inode: VikingInode, _ node: FileNode) throws(Errno) {
        guard node.kind == .ove1, node.ove1Dirty else { return }
        try node.commitOVE1(context: context) { replaced in
            let pathFD = pathDescriptor(of: node.fd)
            if pathFD >= 0 { inodes.replaceBackingInode(of: inode, fd: pathFD, st: replaced) }
        }
    }

    /// OVE1 files bypass the page cache: their size limit (EFBIG) and write-back errors must reach the writing
    /// call, not surface later from the kernel's background writeback. Native files keep their cached pages
    /// across opens: every write goes through this mount, so cached pages stay valid.
    private func openResult(_ file: FileHandle) -> OpenResult {
        let ove1 = file.node.kind == .ove1 || (file.node.kind == .empty && context.newFileFormat == .ove1)
        return OpenResult(handle: retained(file), directIO: ove1, keepCache: !ove1)
    }

    public func open(_ inode: FuseInode, flags: Int32) throws(Errno) -> OpenResult {
        let target = node(inode)
        guard target.isRegularFile else { throw target.isDirectory ? .isDirectory : .invalid }
        let wantsWrite = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
        if wantsWrite {
            try requireWritable()
            if target.isKeyCheck { throw .readOnlyFileSystem }
        }
        let opened = try acquire(target)
        do throws(Errno) {
            if wantsWrite && opened.kind == .legacy { throw Errno.readOnlyFileSystem }
            // Opened read-only because the backing file refused writing (its mode, a read-only file system).
            if wantsWrite && !opened.writableFD { throw Errno.accessDenied }
            if flags & O_TRUNC != 0 { try opened.truncate(to: 0, context: context) }
        } catch {
            release(target, opened)
            throw error
        }
        return openResult(FileHandle(inode: target, node: opened, writable: wantsWrite))
    }

    public func create(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, flags: Int32,
                       caller: FuseCaller) throws(Errno) -> (FuseEntry, OpenResult) {
        try requireWritable()
        let directory = node(parent)
        if isHidden(name) || isKeyCheck(directory, name) { throw .permissionDenied }
        let fd = try directory.withDescriptor { dir throws(Errno) in
            try syscallRetrying { openat(dir, name, O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW | (flags & O_EXCL), mode) }
        }
        if geteuid() == 0 { _ = fchown(fd, caller.uid, caller.gid) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = Errno.current; close(fd); throw e }
        if st.st_size > 0 {
            // Lost a race with another creator: it exists now, so this is an open.
            close(fd)
            let found = try entry(directory, name)
            do throws(Errno) {
                return (found, try open(found.inode, flags: flags & ~(O_CREAT | O_EXCL)))
            } catch {
                forget(found.inode, lookups: 1)
                throw error
            }
        }
        let account = account(in: directory, name: name, isDirectory: false)
        let fileNode: FileNode
        do throws(Errno) {
            fileNode = try sealEmpty(fd: fd, account: account, name: name)
        } catch {
            close(fd)
            _ = try? directory.withDescriptor { dir throws(Errno) in unlinkat(dir, name, 0) }
            throw error
        }
        // Without a descriptor to spare (past the budget, or EMFILE), the inode is reached by name.
        let pathFD = inodes.hasRoomForFileDescriptor ? pathDescriptor(of: fd) : -1
        let inode = try inodes.adopt(fd: pathFD, st: st, parent: directory, name: name) { fd, st throws(Errno) in
            VikingInode(fd: fd, st: st, account: account, isKeyCheck: false)
        }
        let shared: FileNode = inode.state.withWriteLock {
            inode.openCount += 1
            if let existing = inode.openNode { return existing }
            inode.openNode = fileNode
            return fileNode
        }
        _ = try? syscallRetrying { fstat(shared.fd, &st) }
        let entry = FuseEntry(inode: inodes.fuseInode(inode), attributes: shared.presentedAttributes(st))
        return (entry, openResult(FileHandle(inode: inode, node: shared, writable: true)))
    }

    /// Gives a newly created (empty) backing file its sealed form: a native header, or an empty OVE1 envelope.
    private func sealEmpty(fd: Int32, account: String, name: UnsafePointer<CChar>) throws(Errno) -> FileNode {
        switch context.newFileFormat {
        case .native:
            let cipher = try context.createNativeCipher(account: account)
            try pwriteArray(fd, cipher.header.serialized(), at: 0)
            return FileNode(fd: fd, writableFD: true, account: account, backingRoot: context.backingPath,
                            kind: .native, cipher: cipher, size: 0, ove1Plaintext: [])
        case .ove1:
            let envelope: [UInt8]
            do {
                envelope = try SealedFile.sealWhole([], kind: .ove1, account: account, keyRing: context.keyRing)
            } catch {
                Log.error("\(String(cString: name)): cannot seal: \(error)")
                throw Errno.io
            }
            try pwriteArray(fd, envelope, at: 0)
            return FileNode(fd: fd, writableFD: true, account: account, backingRoot: context.backingPath,
                            kind: .ove1, cipher: nil, size: 0, ove1Plaintext: [])
        }
    }

    public func read(_ inode: FuseInode, handle: UInt64, into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try object(handle, as: FileHandle.self).node.read(into: buffer, offset: offset)
    }

    public func write(_ inode: FuseInode, handle: UInt64, from buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try object(handle, as: FileHandle.self).node.write(buffer, offset: offset, context: context)
    }

    public func flush(_ inode: FuseInode, handle: UInt64) throws(Errno) {
        let file = try object(handle, as: FileHandle.self)
        try commit(file.inode, file.node)
    }

    public func fsync(_ inode: FuseInode, handle: UInt64, dataOnly: Bool) throws(Errno) {
        let file = try object(handle, as: FileHandle.self)
        try commit(file.inode, file.node)
        try file.node.sync(dataOnly: dataOnly)
    }

    public func release(_ inode: FuseInode, handle: UInt64) {
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(handle)) else { return }
        let file = Unmanaged<FileHandle>.fromOpaque(pointer).takeRetainedValue()
        do { try commit(file.inode, file.node) } catch {
            Log.error("\(file.node.displayPath): changes could not be written back on close: \(error)")
        }
        release(file.inode, file.node)
    }

    public func fallocate(_ inode: FuseInode, handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(Errno) {
        try requireWritable()
        guard mode == 0 else { throw .notSupported }
        guard offset >= 0, length > 0 else { throw .invalid }
        try object(handle, as: FileHandle.self).node.allocate(offset: offset, length: length, context: context)
    }

    // MARK: Directories and names

    public func mkdir(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, caller: FuseCaller) throws(Errno) -> FuseEntry {
        try requireWritable()
        let directory = node(parent)
        if isHidden(name) { throw .permissionDenied }
        _ = try directory.withDescriptor { dir throws(Errno) in try syscallRetrying { mkdirat(dir, name, mode) } }
        chownToCaller(directory, name, caller)
        return try entry(directory, name)
    }

    public func mknod(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, device: dev_t, caller: FuseCaller) throws(Errno) -> FuseEntry {
        try requireWritable()
        let directory = node(parent)
        if isHidden(name) || isKeyCheck(directory, name) { throw .permissionDenied }
        // Regular files go through create (so they get a header); FIFOs and sockets hold no data.
        guard (mode & S_IFMT) == S_IFIFO || (mode & S_IFMT) == S_IFSOCK else { throw .permissionDenied }
        _ = try directory.withDescriptor { dir throws(Errno) in try syscallRetrying { mknodat(dir, name, mode, device) } }
        chownToCaller(directory, name, caller)
        return try entry(directory, name)
    }

    public func symlink(target: UnsafePointer<CChar>, parent: FuseInode, name: UnsafePointer<CChar>, caller: FuseCaller) throws(Errno) -> FuseEntry {
        try requireWritable()
        let directory = node(parent)
        if isHidden(name) || isKeyCheck(directory, name) { throw .permissionDenied }
        _ = try directory.withDescriptor { dir throws(Errno) in try syscallRetrying { symlinkat(target, dir, name) } }
        chownToCaller(directory, name, caller)
        return try entry(directory, name)
    }

    public func readlink(_ inode: FuseInode, into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno) {
        try node(inode).readLink(into: buffer)
    }

    public func rmdir(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) {
        try requireWritable()
        let directory = node(parent)
        if isHidden(name) { throw .noEntry }
        inodes.keepReachable(name, in: directory)
        try directory.withDescriptor { dir throws(Errno) in
            if unlinkat(dir, name, AT_REMOVEDIR) == 0 { return }
            let failure = Errno.current
            // Hidden leftovers of an interrupted write-back would make a directory look non-empty forever.
            guard failure == Errno(ENOTEMPTY) else { throw failure }
            removeStaleTemporaries(in: dir, name)
            _ = try syscallRetrying { unlinkat(dir, name, AT_REMOVEDIR) }
        }
    }

    public func unlink(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) {
        try requireWritable()
        let directory = node(parent)
        if isHidden(name) { throw .noEntry }
        if isKeyCheck(directory, name) { throw .permissionDenied }
        inodes.keepReachable(name, in: directory)
        _ = try directory.withDescriptor { dir throws(Errno) in try syscallRetrying { unlinkat(dir, name, 0) } }
    }

    private func isDirectory(_ parent: VikingInode, _ name: UnsafePointer<CChar>) throws(Errno) -> Bool {
        var st = stat()
        _ = try parent.withDescriptor { dir throws(Errno) in try syscallRetrying { fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) } }
        return (st.st_mode & S_IFMT) == S_IFDIR
    }

    public func rename(parent: FuseInode, name: UnsafePointer<CChar>, newParent: FuseInode, newName: UnsafePointer<CChar>,
                       flags: UInt32) throws(Errno) {
        try requireWritable()
        let from = node(parent)
        let to = node(newParent)
        if isHidden(name) { throw .noEntry }
        if isHidden(newName) || isKeyCheck(from, name) || isKeyCheck(to, newName) { throw .permissionDenied }
        let sourceIsDirectory = try isDirectory(from, name)
        // Ciphertext never crosses key domains: mv falls back to copy + delete, which re-seals.
        guard account(in: from, name: name, isDirectory: sourceIsDirectory) == account(in: to, name: newName, isDirectory: sourceIsDirectory) else {
            throw .crossDevice
        }
        if flags & GNU.renameExchange != 0 {
            let targetIsDirectory = try isDirectory(to, newName)
            guard account(in: to, name: newName, isDirectory: targetIsDirectory) == account(in: from, name: name, isDirectory: targetIsDirectory) else {
                throw .crossDevice
            }
        }
        if flags & GNU.renameExchange == 0 { inodes.keepReachable(newName, in: to) }
        _ = try from.withDescriptor { a throws(Errno) in
            try to.withDescriptor { b throws(Errno) in
                try syscallRetrying { flags == 0 ? renameat(a, name, b, newName) : GNU.renameat2(a, name, b, newName, flags: flags) }
            }
        }
        inodes.renamed(to: newName, in: to)
        if flags & GNU.renameExchange != 0 { inodes.renamed(to: name, in: from) }
    }

    public func link(_ inode: FuseInode, newParent: FuseInode, newName: UnsafePointer<CChar>) throws(Errno) -> FuseEntry {
        try requireWritable()
        let source = node(inode)
        let directory = node(newParent)
        if source.isKeyCheck || isHidden(newName) || isKeyCheck(directory, newName) { throw .permissionDenied }
        guard source.account == account(in: directory, name: newName, isDirectory: false) else { throw .crossDevice }
        try source.link(into: directory, name: newName)
        return try entry(directory, newName)
    }

    public func opendir(_ inode: FuseInode) throws(Errno) -> UInt64 {
        retained(try DirectoryStream(node(inode)))
    }

    public func readdir(_ inode: FuseInode, handle: UInt64, offset: Int64, into buffer: inout DirectoryBuffer) throws(Errno) {
        let stream = try object(handle, as: DirectoryStream.self)
        let directory = node(inode)
        let directoryFD = stream.fd
        try stream.list(from: offset) { name, ino, type, next throws(Errno) -> Bool in
            if isHidden(name) {
                removeIfStale(directoryFD: directoryFD, name: name)
                return true
            }
            guard buffer.wantsAttributes, !isDotOrDotDot(name) else {
                return buffer.add(name, inode: ino, type: type, nextOffset: next)
            }
            let found: FuseEntry
            do throws(Errno) { found = try entry(directory, name) } catch {
                // Gone since the listing was read: leave it out.
                if error == .noEntry { return true }
                throw error
            }
            if buffer.add(name, entry: found, settings: settings, nextOffset: next) { return true }
            forget(found.inode, lookups: 1)
            return false
        }
    }

    public func releasedir(_ inode: FuseInode, handle: UInt64) {
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(handle)) else { return }
        Unmanaged<DirectoryStream>.fromOpaque(pointer).release()
    }

    public func fsyncdir(_ inode: FuseInode, handle: UInt64, dataOnly: Bool) throws(Errno) {
        let stream = try object(handle, as: DirectoryStream.self)
        _ = try syscallRetrying { Glibc.fsync(stream.fd) }
    }

    /// Removes temporary files older than this mount in `name` (a directory in `parent`): leftovers of a crash
    /// during an OVE1 write-back.
    private func removeStaleTemporaries(in parentFD: Int32, _ name: UnsafePointer<CChar>) {
        let fd = openat(parentFD, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
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

    public func setxattr(_ inode: FuseInode, name: UnsafePointer<CChar>, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) {
        try requireWritable()
        let target = node(inode)
        let visible = String(cString: name)
        guard let backingName = XattrCodec.backingName(for: visible) else { throw .notSupported }
        let key = try context.accountKey(target.account)
        let sealed: [UInt8]
        do { sealed = try XattrCodec.seal(value: Array(value), visibleName: visible, accountKey: key) } catch { throw .io }
        // Symbolic links hold no user attributes on Linux.
        if target.isSymbolicLink { throw .permissionDenied }
        _ = try target.withProcPath { path throws(Errno) in
            try syscallRetrying { ExtendedAttributes.set(path: path, name: backingName, value: sealed, size: sealed.count, flags: flags) }
        }
    }

    public func getxattr(_ inode: FuseInode, name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let target = node(inode)
        let visible = String(cString: name)
        // Other namespaces (security.*, system.posix_acl_*) are not supported, and saying so (rather than
        // "no such attribute") lets tools such as ls stop asking for every file.
        guard let backingName = XattrCodec.backingName(for: visible) else { throw .notSupported }
        if target.isSymbolicLink { throw .noData }
        let sealed: [UInt8] = try target.withProcPath { full throws(Errno) -> [UInt8] in
            let length = try syscallRetrying { ExtendedAttributes.get(path: full, name: backingName, into: nil, size: 0) }
            var sealed = [UInt8](repeating: 0, count: length)
            let got = try syscallRetrying { ExtendedAttributes.get(path: full, name: backingName, into: &sealed, size: length) }
            sealed.removeLast(length - got)
            return sealed
        }
        // Every key of the ring, primary first: during a rotation some values are still under the old root key.
        var opened: [UInt8]? = nil
        for index in context.keyRing.allKeys.indices {
            guard let key = try? context.keyRing.accountKey(target.account, keyIndex: index) else { continue }
            if let value = try? XattrCodec.open(sealed: sealed, visibleName: visible, accountKey: key) {
                opened = value
                break
            }
        }
        guard let value = opened else {
            let location = (try? target.withDescriptor { fd throws(Errno) in FileNode.relativePath(of: fd, backingRoot: context.backingPath) }) ?? nil
            Log.error("\(location ?? "(unlinked file)"): extended attribute \(visible) fails authentication (EIO)")
            throw .io
        }
        if buffer.count == 0 { return value.count }
        guard buffer.count >= value.count else { throw .range }
        value.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: value.count) }
        return value.count
    }

    public func listxattr(_ inode: FuseInode, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let target = node(inode)
        if target.isSymbolicLink { return 0 }
        let (raw, got) = try target.withProcPath { full throws(Errno) -> ([CChar], Int) in
            let length = try syscallRetrying { ExtendedAttributes.list(path: full, into: nil, size: 0) }
            var raw = [CChar](repeating: 0, count: max(length, 1))
            let got = try syscallRetrying { ExtendedAttributes.list(path: full, into: &raw, size: length) }
            return (raw, got)
        }
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

    public func removexattr(_ inode: FuseInode, name: UnsafePointer<CChar>) throws(Errno) {
        try requireWritable()
        let target = node(inode)
        guard let backingName = XattrCodec.backingName(for: String(cString: name)) else { throw .notSupported }
        if target.isSymbolicLink { throw .noData }
        _ = try target.withProcPath { path throws(Errno) in
            try syscallRetrying { ExtendedAttributes.remove(path: path, name: backingName) }
        }
    }
}
