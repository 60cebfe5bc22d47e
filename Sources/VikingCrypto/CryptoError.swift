import COpenSSL

/// What went wrong in a cryptographic operation. Authentication failures are their own case so callers can map
/// them to "tampered or wrong key" without parsing messages.
public enum CryptoError: Error, Equatable, CustomStringConvertible {
    case authenticationFailed
    case invalidKeyLength(expected: Int, actual: Int)
    case invalidNonceLength(expected: Int, actual: Int)
    case bufferTooSmall
    case openssl(String)

    public var description: String {
        switch self {
        case .authenticationFailed: return "authentication failed (wrong key or tampered data)"
        case .invalidKeyLength(let e, let a): return "invalid key length \(a), expected \(e)"
        case .invalidNonceLength(let e, let a): return "invalid nonce length \(a), expected \(e)"
        case .bufferTooSmall: return "output buffer too small"
        case .openssl(let what): return "OpenSSL error: \(what)"
        }
    }

    static func lastOpenSSLError(_ context: String) -> CryptoError {
        let code = ERR_get_error()
        ERR_clear_error()
        if code == 0 { return .openssl(context) }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return .openssl("\(context): \(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
    }
}

public enum SecureRandom {
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) throws(CryptoError) {
        guard buffer.count > 0 else { return }
        guard RAND_bytes(buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(buffer.count)) == 1 else {
            throw CryptoError.lastOpenSSLError("RAND_bytes")
        }
    }

    /// Random bytes for values that are public once used, such as nonces, served from the calling thread's buffer
    /// of the generator's output (`ThreadCiphers.fillPublic`). One `RAND_bytes` call per 4 KiB block write cost
    /// more than a third of the block's encryption (OpenSSL 3 looks up the DRBG's parameters by name on every
    /// call, and checks for a fork with a getpid system call); the buffer asks for 4 KiB at a time. Each byte is
    /// handed out once and wiped. Never for keys: the buffer is ordinary memory.
    public static func fillPublic(_ buffer: UnsafeMutableRawBufferPointer) throws(CryptoError) {
        guard buffer.count > 0 else { return }
        try ThreadCiphers.current().fillPublic(buffer)
    }

    public static func bytes(_ count: Int) throws(CryptoError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let result: Result<Void, CryptoError> = out.withUnsafeMutableBytes { p in Result { () throws(CryptoError) in try fill(p) } }
        try result.get()
        return out
    }
}
