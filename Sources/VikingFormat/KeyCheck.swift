import VikingCrypto
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// `backend_meta.json` in the backing root (DESIGN 4.4): an OVE1 envelope of empty content under the `_system`
/// key. Opening it proves the key ring holds the root key the tree was sealed with.
public enum KeyCheck {
    public static let fileName = "backend_meta.json"

    public enum Status: Equatable, Sendable {
        /// Opened with ring key `keyIndex` (0 = primary).
        case valid(keyIndex: Int)
        case missing
        /// Present but an empty plaintext file: the backend was written unencrypted.
        case unencrypted
    }

    public enum Failure: Error, CustomStringConvertible {
        case wrongKey(path: String)
        case damaged(path: String, reason: String)
        case io(path: String, reason: String)

        public var description: String {
            switch self {
            case .wrongKey(let path):
                return "\(path) does not open with this root key: the key is not the one this tree was sealed with"
            case .damaged(let path, let reason): return "\(path) is damaged: \(reason)"
            case .io(let path, let reason): return "\(path): \(reason)"
            }
        }
    }

    /// Reads and opens the key check in `backingRoot`.
    public static func verify(backingRoot: String, keyRing: KeyRing) throws(Failure) -> Status {
        let path = backingRoot + "/" + fileName
        let bytes: [UInt8]
        switch readAll(path: path) {
        case .success(let b): bytes = b
        case .failure(let e) where e.code == ENOENT: return .missing
        case .failure(let e): throw .io(path: path, reason: e.description)
        }
        if bytes.isEmpty { return .unencrypted }
        guard bytes.starts(with: OVE1.magic) else { throw .damaged(path: path, reason: "not an OVE1 envelope") }
        do {
            let header: OVE1.Header = try bytes.withUnsafeBytes { b throws -> OVE1.Header in try OVE1.parseHeader(b) }
            for index in keyRing.allKeys.indices {
                let accountKey = try keyRing.accountKey(Account.system, keyIndex: index)
                if (try? OVE1.open(bytes, accountKey: accountKey, account: Account.system)) != nil {
                    _ = header
                    return .valid(keyIndex: index)
                }
            }
            throw Failure.wrongKey(path: path)
        } catch let f as Failure {
            throw f
        } catch {
            throw .damaged(path: path, reason: "\(error)")
        }
    }

    /// The bytes of a fresh key check under the ring's primary key.
    public static func sealedBytes(keyRing: KeyRing) throws(FormatError) -> [UInt8] {
        let accountKey: SecureBytes
        do { accountKey = try keyRing.accountKey(Account.system) } catch { throw .malformedHeader("\(error)") }
        return try OVE1.seal([UInt8](), accountKey: accountKey, provider: keyRing.providerKind.rawValue)
    }

    /// Writes a fresh key check atomically (temporary file, fsync, rename, fsync of the directory).
    public static func write(backingRoot: String, keyRing: KeyRing) throws(Failure) {
        let path = backingRoot + "/" + fileName
        let bytes: [UInt8]
        do { bytes = try sealedBytes(keyRing: keyRing) } catch { throw .io(path: path, reason: "\(error)") }
        if let code = writeAtomically(path: path, bytes: bytes, mode: 0o600) {
            throw .io(path: path, reason: String(cString: strerror(code)))
        }
    }

    /// True when any regular file below `root` starts with a sealed magic (the mount only creates a missing key
    /// check in a tree that holds no sealed file). Stops at the first one found.
    public static func treeHoldsSealedFile(root: String) -> Bool {
        var stack = [root]
        while let dir = stack.popLast() {
            guard let d = opendir(dir) else { continue }
            defer { closedir(d) }
            while let entry = readdir(d) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name == "." || name == ".." { continue }
                let path = dir + "/" + name
                var st = stat()
                guard lstat(path, &st) == 0 else { continue }
                if (st.st_mode & S_IFMT) == S_IFDIR { stack.append(path); continue }
                guard (st.st_mode & S_IFMT) == S_IFREG, st.st_size >= 4 else { continue }
                let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                guard fd >= 0 else { continue }
                var prefix = [UInt8](repeating: 0, count: 4)
                let n = pread(fd, &prefix, 4, 0)
                close(fd)
                if n == 4 {
                    let kind = FileKind.classify(prefix: prefix, size: Int64(st.st_size))
                    if kind == .native || kind == .ove1 { return true }
                }
            }
        }
        return false
    }
}

/// An errno value as an Error, for file helpers outside the FUSE binding.
public struct SystemError: Error, Equatable, CustomStringConvertible {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
    public var description: String { String(cString: strerror(code)) }
}

/// Reads a whole file; returns the errno on failure.
public func readAll(path: String) -> Result<[UInt8], SystemError> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(SystemError(errno)) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { return .failure(SystemError(errno)) }
    var out = [UInt8](repeating: 0, count: Int(st.st_size))
    var done = 0
    while done < out.count {
        let n = out.withUnsafeMutableBytes { p in pread(fd, p.baseAddress! + done, p.count - done, off_t(done)) }
        if n < 0 { if errno == EINTR { continue }; return .failure(SystemError(errno)) }
        if n == 0 { out.removeLast(out.count - done); break }
        done += n
    }
    return .success(out)
}

/// Writes `bytes` to a hidden temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs the
/// directory: readers see the old file or the new one, never a torn one. Returns the errno on failure.
public func writeAtomically(path: String, bytes: [UInt8], mode: mode_t) -> Int32? {
    let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
    let base = path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
    let suffix = (try? SecureRandom.bytes(6)).map { Hex.encode($0) } ?? String(getpid())
    let temp = dir + "/" + TemporaryName.prefix + base + "." + suffix
    let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else { return errno }
    var failure: Int32? = nil
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { p in write(fd, p.baseAddress! + done, p.count - done) }
        if n < 0 { if errno == EINTR { continue }; failure = errno; break }
        done += n
    }
    if failure == nil && fsync(fd) != 0 { failure = errno }
    close(fd)
    if failure == nil && rename(temp, path) != 0 { failure = errno }
    if let failure { unlink(temp); return failure }
    let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dfd >= 0 { fsync(dfd); close(dfd) }
    return nil
}

/// Names of vikingfs's temporary files in the backing dir; the mount never lists or opens them.
public enum TemporaryName {
    public static let prefix = ".vikingfs-tmp-"
    /// `vikingfs rotate-root-key`'s write-ahead journal in the backing root: hidden like every temporary file,
    /// but never removed as stale (a rerun after a crash needs it).
    public static let rotationJournal = prefix + "rotation-journal"
    public static func isTemporary<S: StringProtocol>(_ name: S) -> Bool { name.hasPrefix(prefix) }
}
