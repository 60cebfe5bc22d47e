import COpenSSL
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Key material in a page-locked buffer that is wiped when the last reference goes away.
///
/// The buffer is `mlock`ed so it is not written to swap (best effort: a failing `mlock` is not fatal,
/// the bytes are still wiped) and excluded from core dumps with `MADV_DONTDUMP` where the kernel allows it.
/// Keys (up to `SecretSlots.slotBytes`) take a slot of such pages (every file open makes one); larger secrets
/// get pages of their own.
public final class SecureBytes: @unchecked Sendable {
    private let storage: UnsafeMutableRawBufferPointer
    /// Distinguishes keys for the per-thread cipher context cache without comparing key bytes.
    public let identity: UInt64
    /// 0: a slot of `SecretSlots`; otherwise the bytes of the buffer's own locked pages.
    private let ownPagesBytes: Int

    public var count: Int { storage.count }

    /// A zero-filled buffer of `count` bytes.
    public init(count: Int) {
        precondition(count >= 0)
        if count <= SecretSlots.slotBytes {
            storage = UnsafeMutableRawBufferPointer(start: SecretSlots.take(), count: count)
            ownPagesBytes = 0
        } else {
            let rounded = LockedPages.rounded(count)
            storage = UnsafeMutableRawBufferPointer(start: LockedPages.allocate(rounded), count: count)
            ownPagesBytes = rounded
        }
        identity = SecureBytes.identities.add(1, ordering: .relaxed).newValue
    }

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
        guard let base = storage.baseAddress else { return }
        if ownPagesBytes == 0 {
            SecretSlots.give(base)
        } else {
            OPENSSL_cleanse(base, ownPagesBytes)
            _ = munlock(base, ownPagesBytes)
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

    private static let identities = Atomic<UInt64>(0)
}

/// Page-aligned, zeroed, `mlock`ed memory kept out of core dumps (`MADV_DONTDUMP`).
enum LockedPages {
    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    static func rounded(_ count: Int) -> Int { max(pageSize, (count + pageSize - 1) / pageSize * pageSize) }

    static func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
        var raw: UnsafeMutableRawPointer? = nil
        if posix_memalign(&raw, pageSize, bytes) != 0 || raw == nil {
            raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 16)
        }
        let base = raw!
        memset(base, 0, bytes)
        _ = mlock(base, bytes)
        _ = madvise(base, bytes, MADV_DONTDUMP)
        return base
    }
}

/// Slots for small secrets on shared locked pages: `mlock` and `MADV_DONTDUMP` run once per chunk, not once per
/// key (three system calls and a page on every file open otherwise). A released slot is wiped, then reused; chunks
/// stay for the life of the process, so they hold at most as many slots as keys were ever alive at once.
enum SecretSlots {
    static let slotBytes = 64
    static let chunkBytes = 64 * 1024
    /// Addresses of wiped, unused slots.
    private static let unused = Mutex<[UInt]>([])

    static func take() -> UnsafeMutableRawPointer {
        if let address = unused.withLock({ $0.popLast() }), let slot = UnsafeMutableRawPointer(bitPattern: address) {
            return slot
        }
        let chunk = LockedPages.allocate(chunkBytes)
        unused.withLock { list in
            for offset in stride(from: slotBytes, to: chunkBytes, by: slotBytes) { list.append(UInt(bitPattern: chunk + offset)) }
        }
        return chunk
    }

    static func give(_ slot: UnsafeMutableRawPointer) {
        OPENSSL_cleanse(slot, slotBytes)
        unused.withLock { $0.append(UInt(bitPattern: slot)) }
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
