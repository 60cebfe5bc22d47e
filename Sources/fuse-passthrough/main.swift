// A plain passthrough over FuseKit: mirrors SOURCE at MOUNTPOINT with no transformation.
// It exists so the benchmark can show the cost of the binding on its own, beside vikingfs: same kernel caching
// defaults (writeback cache, READDIRPLUS), same inode table. It keeps no per-inode open state, so fstat(2) of an
// unlinked open file fails for inodes past the descriptor budget (vikingfs answers it from the open file).
import FuseKit
#if canImport(Glibc)
import Glibc
#endif

final class Passthrough: FuseFileSystem {
    let inodes: InodeTable<BackingInode>
    let writeback: Bool
    let readdirPlus: Bool

    init(root: Int32, writeback: Bool, readdirPlus: Bool) throws(Errno) {
        var st = stat()
        _ = try syscallRetrying { fstat(root, &st) }
        inodes = InodeTable(root: BackingInode(fd: root, st: st))
        self.writeback = writeback
        self.readdirPlus = readdirPlus
    }

    private var settings = FuseInitSettings()

    func initialize(settings: inout FuseInitSettings) {
        settings.writebackCache = writeback
        settings.readdirPlus = readdirPlus
        settings.attributeTimeout = 1
        settings.entryTimeout = 1
        self.settings = settings
    }

    private func entry(_ parent: FuseInode, _ name: UnsafePointer<CChar>) throws(Errno) -> FuseEntry {
        let (node, st) = try inodes.lookup(in: inodes.node(parent), name: name) { fd, st in BackingInode(fd: fd, st: st) }
        return FuseEntry(inode: inodes.fuseInode(node), attributes: st)
    }

    func lookup(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) -> FuseEntry { try entry(parent, name) }
    func forget(_ inode: FuseInode, lookups: UInt64) { inodes.forget(inode, lookups: lookups) }

    func getattr(_ inode: FuseInode, handle: UInt64?) throws(Errno) -> stat {
        if let handle {
            var st = stat()
            _ = try syscallRetrying { fstat(Int32(handle), &st) }
            return st
        }
        return try inodes.node(inode).attributes()
    }

    func setattr(_ inode: FuseInode, _ changes: AttributeChanges, handle: UInt64?) throws(Errno) -> stat {
        let node = inodes.node(inode)
        let openFD = handle.map { Int32($0) }
        try node.apply(changes, openFD: openFD)
        if let size = changes.size {
            if let openFD {
                _ = try syscallRetrying { ftruncate(openFD, off_t(size)) }
            } else {
                let fd = try node.reopen(flags: O_WRONLY | O_CLOEXEC)
                defer { close(fd) }
                _ = try syscallRetrying { ftruncate(fd, off_t(size)) }
            }
        }
        return try getattr(inode, handle: handle)
    }

    func readlink(_ inode: FuseInode, into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno) {
        try inodes.node(inode).readLink(into: buffer)
    }
    func mkdir(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, caller: FuseCaller) throws(Errno) -> FuseEntry {
        _ = try inodes.node(parent).withDescriptor { dir throws(Errno) in try syscallRetrying { mkdirat(dir, name, mode) } }
        return try entry(parent, name)
    }
    func mknod(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, device: dev_t, caller: FuseCaller) throws(Errno) -> FuseEntry {
        _ = try inodes.node(parent).withDescriptor { dir throws(Errno) in try syscallRetrying { mknodat(dir, name, mode, device) } }
        return try entry(parent, name)
    }
    func symlink(target: UnsafePointer<CChar>, parent: FuseInode, name: UnsafePointer<CChar>, caller: FuseCaller) throws(Errno) -> FuseEntry {
        _ = try inodes.node(parent).withDescriptor { dir throws(Errno) in try syscallRetrying { symlinkat(target, dir, name) } }
        return try entry(parent, name)
    }
    func link(_ inode: FuseInode, newParent: FuseInode, newName: UnsafePointer<CChar>) throws(Errno) -> FuseEntry {
        try inodes.node(inode).link(into: inodes.node(newParent), name: newName)
        return try entry(newParent, newName)
    }
    func unlink(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) {
        inodes.keepReachable(name, in: inodes.node(parent))
        _ = try inodes.node(parent).withDescriptor { dir throws(Errno) in try syscallRetrying { unlinkat(dir, name, 0) } }
    }
    func rmdir(parent: FuseInode, name: UnsafePointer<CChar>) throws(Errno) {
        inodes.keepReachable(name, in: inodes.node(parent))
        _ = try inodes.node(parent).withDescriptor { dir throws(Errno) in try syscallRetrying { unlinkat(dir, name, AT_REMOVEDIR) } }
    }
    func rename(parent: FuseInode, name: UnsafePointer<CChar>, newParent: FuseInode, newName: UnsafePointer<CChar>, flags: UInt32) throws(Errno) {
        let from = inodes.node(parent), to = inodes.node(newParent)
        if flags & GNU.renameExchange == 0 { inodes.keepReachable(newName, in: to) }
        _ = try from.withDescriptor { a throws(Errno) in
            try to.withDescriptor { b throws(Errno) in try syscallRetrying { GNU.renameat2(a, name, b, newName, flags: flags) } }
        }
        inodes.renamed(to: newName, in: to)
        if flags & GNU.renameExchange != 0 { inodes.renamed(to: name, in: from) }
    }

    private func openFlags(_ flags: Int32) -> Int32 {
        // The writeback cache may read from files opened write-only; O_APPEND is the kernel's job then.
        var f = flags & ~(O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW)
        if writeback && f & O_ACCMODE == O_WRONLY { f = (f & ~O_ACCMODE) | O_RDWR }
        return f | O_CLOEXEC
    }
    func open(_ inode: FuseInode, flags: Int32) throws(Errno) -> OpenResult {
        let fd = try inodes.node(inode).reopen(flags: openFlags(flags))
        return OpenResult(handle: UInt64(fd), keepCache: true)
    }
    func create(parent: FuseInode, name: UnsafePointer<CChar>, mode: mode_t, flags: Int32, caller: FuseCaller) throws(Errno) -> (FuseEntry, OpenResult) {
        let fd = try inodes.node(parent).withDescriptor { dir throws(Errno) in
            try syscallRetrying { openat(dir, name, openFlags(flags) | O_CREAT | (flags & O_EXCL), mode) }
        }
        do throws(Errno) {
            return (try entry(parent, name), OpenResult(handle: UInt64(fd)))
        } catch {
            close(fd)
            throw error
        }
    }
    func read(_ inode: FuseInode, handle: UInt64, into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try syscallRetrying { pread(Int32(handle), buffer.baseAddress, buffer.count, off_t(offset)) }
    }
    func write(_ inode: FuseInode, handle: UInt64, from buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try syscallRetrying { pwrite(Int32(handle), buffer.baseAddress, buffer.count, off_t(offset)) }
    }
    func statfs(_ inode: FuseInode) throws(Errno) -> statvfs {
        var st = statvfs()
        _ = try inodes.root.withDescriptor { fd throws(Errno) in try syscallRetrying { fstatvfs(fd, &st) } }
        return st
    }
    func release(_ inode: FuseInode, handle: UInt64) { close(Int32(handle)) }
    func fsync(_ inode: FuseInode, handle: UInt64, dataOnly: Bool) throws(Errno) {
        _ = try syscallRetrying { dataOnly ? fdatasync(Int32(handle)) : Glibc.fsync(Int32(handle)) }
    }
    func opendir(_ inode: FuseInode) throws(Errno) -> UInt64 {
        UInt64(UInt(bitPattern: Unmanaged.passRetained(try DirectoryStream(inodes.node(inode))).toOpaque()))
    }
    private func stream(_ handle: UInt64) -> DirectoryStream {
        Unmanaged<DirectoryStream>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(handle))!).takeUnretainedValue()
    }
    func readdir(_ inode: FuseInode, handle: UInt64, offset: Int64, into buffer: inout DirectoryBuffer) throws(Errno) {
        let directory = inodes.node(inode)
        try stream(handle).list(from: offset) { name, ino, type, next throws(Errno) -> Bool in
            guard buffer.wantsAttributes, !isDotOrDotDot(name) else { return buffer.add(name, inode: ino, type: type, nextOffset: next) }
            let (node, st) = try inodes.lookup(in: directory, name: name) { fd, st in BackingInode(fd: fd, st: st) }
            let found = FuseEntry(inode: inodes.fuseInode(node), attributes: st)
            if buffer.add(name, entry: found, settings: settings, nextOffset: next) { return true }
            inodes.forget(found.inode, lookups: 1)
            return false
        }
    }
    func releasedir(_ inode: FuseInode, handle: UInt64) {
        Unmanaged<DirectoryStream>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(handle))!).release()
    }
    func fsyncdir(_ inode: FuseInode, handle: UInt64, dataOnly: Bool) throws(Errno) {
        _ = try syscallRetrying { Glibc.fsync(stream(handle).fd) }
    }
    func fallocate(_ inode: FuseInode, handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(Errno) {
        _ = try syscallRetrying { GNU.fallocate(Int32(handle), mode: mode, offset: offset, length: length) }
    }
}

var arguments = Array(CommandLine.arguments.dropFirst())
var foreground = false
var debug = false
var options: [String] = []
var positional: [String] = []
// The same kernel caching as vikingfs-mount's defaults, so the two compare like for like.
var writeback = true
var readdirPlus = true
var ioUring = true
var ioUringPollMicroseconds = FuseMountConfiguration().ioUringPollMicroseconds
while !arguments.isEmpty {
    let a = arguments.removeFirst()
    switch a {
    case "-f": foreground = true
    case "-d": debug = true; foreground = true
    case "-o":
        if !arguments.isEmpty {
            for option in arguments.removeFirst().split(separator: ",").map(String.init) {
                switch option {
                case "writeback": writeback = true
                case "no_writeback": writeback = false
                case "readdirplus": readdirPlus = true
                case "no_readdirplus": readdirPlus = false
                case "io_uring": ioUring = true
                case "no_io_uring": ioUring = false
                case _ where option.hasPrefix("io_uring_poll_us="):
                    guard let microseconds = UInt32(option.dropFirst("io_uring_poll_us=".count)) else {
                        fputs("fuse-passthrough: io_uring_poll_us needs a number of microseconds\n", stderr)
                        exit(2)
                    }
                    ioUringPollMicroseconds = microseconds
                default: options.append(option)
                }
            }
        }
    case "-h", "--help":
        print("usage: fuse-passthrough SOURCE MOUNTPOINT [-f] [-d] [-o no_writeback,no_readdirplus,no_io_uring,io_uring_poll_us=N,opt,...]")
        exit(0)
    default: positional.append(a)
    }
}
guard positional.count == 2 else {
    fputs("usage: fuse-passthrough SOURCE MOUNTPOINT [-f] [-d] [-o opt,...]\n", stderr)
    exit(2)
}
let readiness = foreground ? nil : Daemon.detach()
let rootFD = Glibc.open(positional[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC)
guard rootFD >= 0 else {
    fputs("fuse-passthrough: \(positional[0]): \(String(cString: strerror(errno)))\n", stderr)
    exit(1)
}
var configuration = FuseMountConfiguration()
configuration.debug = debug
if !ioUring { configuration.ioUringEntriesPerQueue = 0 }
configuration.ioUringPollMicroseconds = ioUringPollMicroseconds
configuration.log = { _, message in fputs("fuse-passthrough: \(message)\n", stderr) }
// As vikingfs-mount: the kernel checks modes only when other users may enter.
if (options.contains("allow_other") || options.contains("allow_root")) && !options.contains("default_permissions") {
    options.append("default_permissions")
}
configuration.options = ["fsname=\(positional[0])", "subtype=passthrough"] + options
do {
    let status = try FuseSession.run(try Passthrough(root: rootFD, writeback: writeback, readdirPlus: readdirPlus), mountpoint: positional[1], configuration: configuration) {
        readiness?.signalReady()
    }
    exit(status == 0 ? 0 : 1)
} catch {
    fputs("fuse-passthrough: \(error)\n", stderr)
    exit(1)
}
