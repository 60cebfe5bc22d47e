import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// Key material in a page-locked buffer that is wiped when the last reference goes away.
///
/// The buffer is `mlock`ed so it is not written to swap (best effort: a failing `mlock` is not fatal,
/// the bytes are still wiped) and excluded from core dumps with `MADV_DONTDUMP` where the kernel allows it.
public final class SecureBytes: @unchecked Sendable {
    private let storage: UnsafeMutableRawBufferPointer
    /// Distinguishes keys for the per-thread cipher context cache without comparing key bytes.
    public let identity: UInt64

    public var count: Int { storage.count }

    /// A zero-filled buffer of `count` bytes.
    public init(count: Int) {
        precondition(count >= 0)
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let rounded = max(pageSize, (count + pageSize - 1) / pageSize * pageSize)
        var raw: UnsafeMutableRawPointer? = nil
        if posix_memalign(&raw, pageSize, rounded) != 0 || raw == nil {
            raw = UnsafeMutableRawPointer.allocate(byteCount: rounded, alignment: 16)
        }
        let base = raw!
        memset(base, 0, rounded)
        _ = mlock(base, rounded)
        _ = madvise(base, rounded, MADV_DONTDUMP)
        storage = UnsafeMutableRawBufferPointer(start: base, count: count)
        allocatedBytes = rounded
        identity = SecureBytes.nextIdentity()
    }

    private let allocatedBytes: Int

    /// Copies `bytes` into a new secure buffer. The caller remains responsible for wiping its own copy.
    public convenience init<C: Collection>(copying bytes: C) where C.Element == UInt8 {
        self.init(count: bytes.count)
        var i = 0
        for b in bytes { storage[i] = b; i += 1 }
    }

    /// Fresh random bytes from OpenSSL's CSPRNG.
    public static func random(count: Int) throws(CryptoError) -> SecureBytes {
        let key = SecureBytes(count: count)
        try key.withUnsafeMutableBytes { (p) throws(CryptoError) in try SecureRandom.fill(p) }
        return key
    }

    deinit {
        if let base = storage.baseAddress {
            OPENSSL_cleanse(base, allocatedBytes)
            _ = munlock(base, allocatedBytes)
            free(base)
        }
    }

    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(storage))
    }

    public func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(storage)
    }

    /// Constant-time equality of two key buffers.
    public func constantTimeEquals(_ other: SecureBytes) -> Bool {
        guard count == other.count else { return false }
        return withUnsafeBytes { a in other.withUnsafeBytes { b in ConstantTime.equals(a, b) } }
    }

    /// Lowercase hex of the bytes, into a secure buffer; used only to write key files.
    public func hexEncoded() -> SecureBytes {
        let hex = SecureBytes(count: count * 2)
        let digits = Array("0123456789abcdef".utf8)
        withUnsafeBytes { src in
            hex.withUnsafeMutableBytes { dst in
                for i in 0..<src.count {
                    dst[2 * i] = digits[Int(src[i] >> 4)]
                    dst[2 * i + 1] = digits[Int(src[i] & 0x0f)]
                }
            }
        }
        return hex
    }

    private static let counter = AtomicCounter()
    private static func nextIdentity() -> UInt64 { counter.next() }
}

/// A tiny lock-protected counter; key creation is rare, so a mutex is fine here.
final class AtomicCounter: @unchecked Sendable {
    private var value: UInt64 = 0
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    func next() -> UInt64 {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        value &+= 1
        return value
    }
}

public enum ConstantTime {
    /// Compares two buffers in time that depends only on their lengths.
    public static func equals(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        if a.count == 0 { return true }
        return CRYPTO_memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0
    }

    public static func equals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in equals(pa, pb) } }
    }
}

/// Wipes a byte array in place (for transient copies of secrets held in ordinary arrays).
public func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { p in
        if let base = p.baseAddress { OPENSSL_cleanse(base, p.count) }
    }
}
