import VikingCrypto
#if canImport(Glibc)
import Glibc
#endif

/// Something that can hand out the root key. Loading happens once at start; a provider never invents a key
/// when it cannot load one (creating keys is `create`, an explicit admin action).
public protocol RootKeyProvider: Sendable {
    var kind: ProviderKind { get }
    /// A short human description for messages (never key material).
    var summary: String { get }
    func loadRootKey() throws(KeyError) -> RootKey
    /// Creates and stores a fresh root key; refuses when one exists already.
    func createRootKey() throws(KeyError) -> RootKey
}

/// A root key in a local file: 64 hex characters and an optional trailing newline, mode 0600, owned by the user.
public struct KeyFileProvider: RootKeyProvider {
    public let path: String
    public var kind: ProviderKind { .localFile }
    public var summary: String { "key file \(path)" }

    public init(path: String) { self.path = path }

    public func loadRootKey() throws(KeyError) -> RootKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw .keyFile(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .keyFile(path: path, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .keyFile(path: path, reason: "not a regular file") }
        guard st.st_mode & 0o077 == 0 else {
            throw .keyFile(path: path, reason: octalMode(st.st_mode & 0o7777) + " lets group or others read it; run chmod 600 \(path)")
        }
        guard st.st_uid == geteuid() else {
            throw .keyFile(path: path, reason: "owned by uid \(st.st_uid), not by the user running vikingfs (uid \(geteuid()))")
        }
        // Read into a secure buffer; the hex text is key material too.
        let text = SecureBytes(count: 80)
        let count = text.withUnsafeMutableBytes { buffer in read(fd, buffer.baseAddress, buffer.count) }
        guard count >= 0 else { throw .keyFile(path: path, reason: String(cString: strerror(errno))) }
        let parsed: SecureBytes? = text.withUnsafeBytes { buffer in
            var length = count
            if length == 65 && buffer[64] == UInt8(ascii: "\n") { length = 64 }
            if length == 66 && buffer[64] == UInt8(ascii: "\r") && buffer[65] == UInt8(ascii: "\n") { length = 64 }
            guard length == 64 else { return nil }
            return Hex.decodeSecure(UnsafeRawBufferPointer(rebasing: buffer[0..<64]))
        }
        guard let parsed else {
            throw .keyFile(path: path, reason: "must hold exactly 64 hex characters (32 bytes) and an optional newline")
        }
        return try RootKey(bytes: parsed)
    }

    public func createRootKey() throws(KeyError) -> RootKey {
        let key: SecureBytes
        do { key = try SecureBytes.random(count: RootKey.length) } catch { throw .crypto(error) }
        let root = try RootKey(bytes: key)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            if errno == EEXIST { throw .alreadyExists("key file \(path)") }
            throw .keyFile(path: path, reason: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        let hex = key.hexEncoded()
        let ok = hex.withUnsafeBytes { h -> Bool in
            write(fd, h.baseAddress, h.count) == h.count && write(fd, "\n", 1) == 1
        }
        guard ok, fchmod(fd, 0o600) == 0, fsync(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(path)
            throw .keyFile(path: path, reason: reason)
        }
        return root
    }
}

func octalMode(_ mode: mode_t) -> String {
    let digits = String(mode, radix: 8)
    return "mode " + String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}
