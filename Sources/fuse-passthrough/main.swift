// A plain passthrough over FuseKit: mirrors SOURCE at MOUNTPOINT with no transformation.
// It exists so the benchmark can show the cost of the binding on its own, beside vikingfs.
import FuseKit
import CFuse
#if canImport(Glibc)
import Glibc
#endif

final class Passthrough: FuseFileSystem {
    let root: Int32
    let writeback: Bool
    init(root: Int32, writeback: Bool) { self.root = root; self.writeback = writeback }

    func initialize(settings: inout FuseInitSettings) {
        settings.writebackCache = writeback
        settings.attributeTimeout = 1
        settings.entryTimeout = 1
    }

    func getattr(_ path: FusePath?, handle: UInt64?) throws(Errno) -> stat {
        var st = stat()
        if let handle {
            _ = try syscallRetrying { fstat(Int32(handle), &st) }
        } else if let path {
            _ = try syscallRetrying { fstatat(root, path.relative, &st, AT_SYMLINK_NOFOLLOW) }
        } else { throw .badFile }
        return st
    }
    func readlink(_ path: FusePath, into buffer: UnsafeMutableBufferPointer<CChar>) throws(Errno) {
        let n = try syscallRetrying { Glibc.readlinkat(root, path.relative, buffer.baseAddress!, buffer.count - 1) }
        buffer[n] = 0
    }
    func mkdir(_ path: FusePath, mode: mode_t) throws(Errno) { _ = try syscallRetrying { mkdirat(root, path.relative, mode) } }
    func mknod(_ path: FusePath, mode: mode_t, device: dev_t) throws(Errno) { _ = try syscallRetrying { mknodat(root, path.relative, mode, device) } }
    func unlink(_ path: FusePath) throws(Errno) { _ = try syscallRetrying { unlinkat(root, path.relative, 0) } }
    func rmdir(_ path: FusePath) throws(Errno) { _ = try syscallRetrying { unlinkat(root, path.relative, AT_REMOVEDIR) } }
    func symlink(target: FusePath, at path: FusePath) throws(Errno) { _ = try syscallRetrying { symlinkat(target.cString, root, path.relative) } }
    func rename(_ from: FusePath, to: FusePath, flags: UInt32) throws(Errno) {
        _ = try syscallRetrying { GNU.renameat2(root, from.relative, root, to.relative, flags: flags) }
    }
    func link(_ from: FusePath, to: FusePath) throws(Errno) { _ = try syscallRetrying { linkat(root, from.relative, root, to.relative, 0) } }
    func chmod(_ path: FusePath?, mode: mode_t, handle: UInt64?) throws(Errno) {
        if let handle { _ = try syscallRetrying { fchmod(Int32(handle), mode) } }
        else if let path { _ = try syscallRetrying { fchmodat(root, path.relative, mode, 0) } }
    }
    func chown(_ path: FusePath?, uid: uid_t, gid: gid_t, handle: UInt64?) throws(Errno) {
        if let handle { _ = try syscallRetrying { fchown(Int32(handle), uid, gid) } }
        else if let path { _ = try syscallRetrying { fchownat(root, path.relative, uid, gid, AT_SYMLINK_NOFOLLOW) } }
    }
    func truncate(_ path: FusePath?, size: Int64, handle: UInt64?) throws(Errno) {
        if let handle { _ = try syscallRetrying { ftruncate(Int32(handle), off_t(size)) }; return }
        guard let path else { throw .badFile }
        let fd = try syscallRetrying { cfuse_open_mode(root, path.relative, O_WRONLY | O_CLOEXEC, 0) }
        defer { close(fd) }
        _ = try syscallRetrying { ftruncate(fd, off_t(size)) }
    }
    func openFlags(_ flags: Int32) -> Int32 {
        // The writeback cache may read from files opened write-only; O_APPEND is the kernel's job then.
        var f = flags & ~O_APPEND
        if f & O_ACCMODE == O_WRONLY { f = (f & ~O_ACCMODE) | O_RDWR }
        return f | O_CLOEXEC
    }
    func open(_ path: FusePath, flags: Int32) throws(Errno) -> OpenResult {
        let fd = try syscallRetrying { cfuse_open_mode(root, path.relative, openFlags(flags), 0) }
        return OpenResult(handle: UInt64(fd), keepCache: true)
    }
    func create(_ path: FusePath, mode: mode_t, flags: Int32) throws(Errno) -> OpenResult {
        let fd = try syscallRetrying { cfuse_open_mode(root, path.relative, openFlags(flags) | O_CREAT, mode) }
        return OpenResult(handle: UInt64(fd))
    }
    func read(_ path: FusePath?, handle: UInt64, into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try syscallRetrying { pread(Int32(handle), buffer.baseAddress, buffer.count, off_t(offset)) }
    }
    func write(_ path: FusePath?, handle: UInt64, from buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try syscallRetrying { pwrite(Int32(handle), buffer.baseAddress, buffer.count, off_t(offset)) }
    }
    func statfs(_ path: FusePath) throws(Errno) -> statvfs {
        var st = statvfs()
        _ = try syscallRetrying { fstatvfs(root, &st) }
        return st
    }
    func release(_ path: FusePath?, handle: UInt64) { close(Int32(handle)) }
    func fsync(_ path: FusePath?, handle: UInt64, dataOnly: Bool) throws(Errno) {
        _ = try syscallRetrying { dataOnly ? fdatasync(Int32(handle)) : Glibc.fsync(Int32(handle)) }
    }
    func opendir(_ path: FusePath) throws(Errno) -> UInt64 {
        let fd = try syscallRetrying { cfuse_open_mode(root, path.relative, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0) }
        guard let dir = fdopendir(fd) else { close(fd); throw .current }
        return UInt64(UInt(bitPattern: dir))
    }
    func readdir(_ path: FusePath?, handle: UInt64, filler: DirectoryFiller) throws(Errno) {
        guard let dir = OpaquePointer(bitPattern: UInt(handle)) else { throw .badFile }
        rewinddir(dir)
        while let entry = Glibc.readdir(dir) {
            let type = mode_t(entry.pointee.d_type) << 12
            let ok = withUnsafePointer(to: entry.pointee.d_name) { p in
                p.withMemoryRebound(to: CChar.self, capacity: 256) { filler.add($0, inode: UInt64(entry.pointee.d_ino), type: type) }
            }
            if !ok { break }
        }
    }
    func releasedir(_ path: FusePath?, handle: UInt64) {
        if let dir = OpaquePointer(bitPattern: UInt(handle)) { closedir(dir) }
    }
    func access(_ path: FusePath, mask: Int32) throws(Errno) { _ = try syscallRetrying { faccessat(root, path.relative, mask, 0) } }
    func utimens(_ path: FusePath?, times: UnsafePointer<timespec>?, handle: UInt64?) throws(Errno) {
        if let handle { _ = try syscallRetrying { futimens(Int32(handle), times) } }
        else if let path { _ = try syscallRetrying { utimensat(root, path.relative, times, AT_SYMLINK_NOFOLLOW) } }
    }
    func fallocate(_ path: FusePath?, mode: Int32, offset: Int64, length: Int64, handle: UInt64) throws(Errno) {
        _ = try syscallRetrying { GNU.fallocate(Int32(handle), mode: mode, offset: offset, length: length) }
    }
}

var arguments = Array(CommandLine.arguments.dropFirst())
var foreground = false
var debug = false
var options: [String] = []
var positional: [String] = []
var writeback = false
while !arguments.isEmpty {
    let a = arguments.removeFirst()
    switch a {
    case "-f": foreground = true
    case "-d": debug = true; foreground = true
    case "-o":
        if !arguments.isEmpty {
            for option in arguments.removeFirst().split(separator: ",").map(String.init) {
                if option == "writeback" { writeback = true } else { options.append(option) }
            }
        }
    case "-h", "--help":
        print("usage: fuse-passthrough SOURCE MOUNTPOINT [-f] [-d] [-o writeback,opt,...]")
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
configuration.options = ["fsname=\(positional[0])", "subtype=passthrough", "default_permissions"] + options
do {
    let status = try FuseSession.run(Passthrough(root: rootFD, writeback: writeback), mountpoint: positional[1], configuration: configuration) {
        readiness?.signalReady()
    }
    exit(status == 0 ? 0 : 1)
} catch {
    fputs("fuse-passthrough: \(error)\n", stderr)
    exit(1)
}
