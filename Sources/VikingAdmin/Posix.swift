import CSystem
import VikingCrypto
import VikingFormat
#if canImport(Glibc)
import Glibc
#endif

/// Thin, EINTR-safe wrappers over the system calls the admin commands use. Every failure comes back as the errno.
enum Posix {
    static func open(_ path: [CChar], _ flags: Int32, _ mode: mode_t = 0) -> Result<Int32, SystemError> {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return .success(fd) }
            if errno != EINTR { return .failure(SystemError(errno)) }
        }
    }

    static func fstat(_ fd: Int32) -> Result<stat, SystemError> {
        var st = stat()
        return Glibc.fstat(fd, &st) == 0 ? .success(st) : .failure(SystemError(errno))
    }

    static func lstat(_ path: [CChar]) -> Result<stat, SystemError> {
        var st = stat()
        return Glibc.lstat(path, &st) == 0 ? .success(st) : .failure(SystemError(errno))
    }

    /// Reads from `offset` until `buffer` is full or the file ends; returns the bytes read.
    static func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, at offset: Int64) -> Result<Int, SystemError> {
        var done = 0
        while done < buffer.count {
            let n = Glibc.pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 { if errno == EINTR { continue }; return .failure(SystemError(errno)) }
            if n == 0 { break }
            done += n
        }
        return .success(done)
    }

    /// Reads sequentially until `buffer` is full or the file ends.
    static func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Result<Int, SystemError> {
        var done = 0
        while done < buffer.count {
            let n = Glibc.read(fd, buffer.baseAddress! + done, buffer.count - done)
            if n < 0 { if errno == EINTR { continue }; return .failure(SystemError(errno)) }
            if n == 0 { break }
            done += n
        }
        return .success(done)
    }

    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Result<Void, SystemError> {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 { if errno == EINTR { continue }; return .failure(SystemError(errno)) }
            done += n
        }
        return .success(())
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) -> Result<Void, SystemError> {
        bytes.withUnsafeBytes { write(fd, $0) }
    }

    static func pwrite(_ fd: Int32, _ bytes: [UInt8], at offset: Int64) -> Result<Void, SystemError> {
        bytes.withUnsafeBytes { b in
            var done = 0
            while done < b.count {
                let n = Glibc.pwrite(fd, b.baseAddress! + done, b.count - done, off_t(offset) + off_t(done))
                if n < 0 { if errno == EINTR { continue }; return .failure(SystemError(errno)) }
                done += n
            }
            return .success(())
        }
    }

    /// The first `count` bytes of a file (fewer if it is shorter).
    static func readPrefix(_ fd: Int32, count: Int) -> Result<[UInt8], SystemError> {
        var out = [UInt8](repeating: 0, count: count)
        let n = out.withUnsafeMutableBytes { pread(fd, $0, at: 0) }
        switch n {
        case .success(let n): out.removeLast(count - n); return .success(out)
        case .failure(let e): return .failure(e)
        }
    }

    /// The whole content of an open file, read to its end (not trusting a size taken earlier).
    static func readToEnd(_ fd: Int32, sizeHint: Int) -> Result<[UInt8], SystemError> {
        var out = [UInt8](repeating: 0, count: max(sizeHint, 0) + 1)
        var done = 0
        while true {
            if done == out.count { out.append(contentsOf: repeatElement(0, count: max(out.count, 4096))) }
            let n = out.withUnsafeMutableBytes { p in Glibc.pread(fd, p.baseAddress! + done, p.count - done, off_t(done)) }
            if n < 0 { if errno == EINTR { continue }; return .failure(SystemError(errno)) }
            if n == 0 { break }
            done += n
        }
        out.removeLast(out.count - done)
        return .success(out)
    }

    // MARK: extended attributes

    /// Names of the file's extended attributes, raw.
    static func listXattrs(_ fd: Int32) -> Result<[[UInt8]], SystemError> {
        while true {
            let size = flistxattr(fd, nil, 0)
            if size < 0 {
                if errno == ENOTSUP { return .success([]) }
                return .failure(SystemError(errno))
            }
            if size == 0 { return .success([]) }
            var buffer = [CChar](repeating: 0, count: size)
            let got = flistxattr(fd, &buffer, size)
            if got < 0 {
                if errno == ERANGE { continue }  // grew in between
                return .failure(SystemError(errno))
            }
            var names: [[UInt8]] = []
            var current: [UInt8] = []
            for c in buffer.prefix(got) {
                if c == 0 {
                    if !current.isEmpty { names.append(current) }
                    current = []
                } else {
                    current.append(UInt8(bitPattern: c))
                }
            }
            if !current.isEmpty { names.append(current) }
            return .success(names)
        }
    }

    static func getXattr(_ fd: Int32, _ name: [UInt8]) -> Result<[UInt8], SystemError> {
        let cname = name.map { CChar(bitPattern: $0) } + [0]
        while true {
            let size = fgetxattr(fd, cname, nil, 0)
            if size < 0 { return .failure(SystemError(errno)) }
            var value = [UInt8](repeating: 0, count: size)
            let got = value.withUnsafeMutableBytes { fgetxattr(fd, cname, $0.baseAddress, $0.count) }
            if got < 0 {
                if errno == ERANGE { continue }
                return .failure(SystemError(errno))
            }
            value.removeLast(size - got)
            return .success(value)
        }
    }

    static func setXattr(_ fd: Int32, _ name: [UInt8], _ value: [UInt8]) -> Result<Void, SystemError> {
        let cname = name.map { CChar(bitPattern: $0) } + [0]
        let rc = value.withUnsafeBytes { fsetxattr(fd, cname, $0.baseAddress, $0.count, 0) }
        return rc == 0 ? .success(()) : .failure(SystemError(errno))
    }

    static func removeXattr(_ fd: Int32, _ name: [UInt8]) -> Result<Void, SystemError> {
        let cname = name.map { CChar(bitPattern: $0) } + [0]
        return fremovexattr(fd, cname) == 0 ? .success(()) : .failure(SystemError(errno))
    }

    /// A random hex string for temporary names.
    static func randomSuffix() -> String {
        (try? SecureRandom.bytes(8)).map { Hex.encode($0) } ?? String(getpid()) + "-" + String(UInt(bitPattern: time(nil)))
    }

    /// Flushes the whole filesystem holding `path` (one journal commit instead of one per file).
    static func syncFilesystem(_ path: [CChar]) -> Result<Void, SystemError> {
        switch open(path, O_RDONLY | O_DIRECTORY) {
        case .failure(let e): return .failure(e)
        case .success(let fd):
            defer { close(fd) }
            return syncfs(fd) == 0 ? .success(()) : .failure(SystemError(errno))
        }
    }
}

/// Names of the admin command's own temporary files: the shared hidden prefix, so a mount never shows them and a
/// crash leaves nothing visible, plus a marker telling them apart from the mount's own temporary files.
enum AdminTemporary {
    static let prefix = TemporaryName.prefix + "admin-"
    /// The rotation journal in the backing root (see docs/admin.md); never removed as a stale temporary file.
    static let journalName = TemporaryName.rotationJournal

    static func fresh() -> [UInt8] { Array((prefix + Posix.randomSuffix()).utf8) }
}

extension XattrCodec {
    static var backingPrefixBytes: [UInt8] { Array(backingPrefix.utf8) }
    static var visiblePrefixBytes: [UInt8] { Array(visiblePrefix.utf8) }
}
