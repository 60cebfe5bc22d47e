import COpenSSL
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// AES-256-GCM over OpenSSL's EVP interface, with one cipher context per thread and direction.
///
/// A fresh `EVP_CIPHER_CTX` per call costs about a third of the throughput on 4 KiB blocks, and re-expanding the
/// key schedule costs more; each thread therefore keeps its contexts and re-keys only when the key changes
/// (keys are told apart by `SecureBytes.identity`, never by comparing bytes).
public enum AESGCM {
    public static let keyLength = 32
    public static let nonceLength = 12
    public static let tagLength = 16

    /// Seals `plaintext` into `output` (`plaintext.count + 16` bytes: ciphertext then tag).
    public static func seal(key: SecureBytes, nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer? = nil,
                            plaintext: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) throws(CryptoError) {
        try checkLengths(key: key, nonce: nonce)
        guard output.count >= plaintext.count + tagLength else { throw .bufferTooSmall }
        let ctx = try ThreadCiphers.current().context(encrypt: true, key: key)
        let out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        guard EVP_EncryptInit_ex(ctx, nil, nil, nil, nonce.baseAddress!.assumingMemoryBound(to: UInt8.self)) == 1 else {
            throw CryptoError.lastOpenSSLError("EVP_EncryptInit_ex(nonce)")
        }
        var outLength: Int32 = 0
        if let aad, aad.count > 0 {
            guard EVP_EncryptUpdate(ctx, nil, &outLength, aad.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(aad.count)) == 1 else {
                throw CryptoError.lastOpenSSLError("EVP_EncryptUpdate(aad)")
            }
        }
        var written = 0
        if plaintext.count > 0 {
            guard EVP_EncryptUpdate(ctx, out, &outLength, plaintext.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(plaintext.count)) == 1 else {
                throw CryptoError.lastOpenSSLError("EVP_EncryptUpdate")
            }
            written = Int(outLength)
        }
        guard EVP_EncryptFinal_ex(ctx, out + written, &outLength) == 1 else {
            throw CryptoError.lastOpenSSLError("EVP_EncryptFinal_ex")
        }
        written += Int(outLength)
        guard EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, Int32(tagLength), out + written) == 1 else {
            throw CryptoError.lastOpenSSLError("EVP_CTRL_GCM_GET_TAG")
        }
    }

    /// Opens `sealed` (ciphertext then 16-byte tag) into `output` (`sealed.count - 16` bytes).
    /// On failure the output is wiped: OpenSSL has already written unauthenticated plaintext into it.
    public static func open(key: SecureBytes, nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer? = nil,
                            sealed: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) throws(CryptoError) {
        try checkLengths(key: key, nonce: nonce)
        guard sealed.count >= tagLength else { throw .authenticationFailed }
        let bodyLength = sealed.count - tagLength
        guard output.count >= bodyLength else { throw .bufferTooSmall }
        let ctx = try ThreadCiphers.current().context(encrypt: false, key: key)
        let out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let input = sealed.baseAddress!.assumingMemoryBound(to: UInt8.self)
        guard EVP_DecryptInit_ex(ctx, nil, nil, nil, nonce.baseAddress!.assumingMemoryBound(to: UInt8.self)) == 1 else {
            throw CryptoError.lastOpenSSLError("EVP_DecryptInit_ex(nonce)")
        }
        var outLength: Int32 = 0
        if let aad, aad.count > 0 {
            guard EVP_DecryptUpdate(ctx, nil, &outLength, aad.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(aad.count)) == 1 else {
                throw CryptoError.lastOpenSSLError("EVP_DecryptUpdate(aad)")
            }
        }
        var written = 0
        if bodyLength > 0 {
            guard EVP_DecryptUpdate(ctx, out, &outLength, input, Int32(bodyLength)) == 1 else {
                throw CryptoError.lastOpenSSLError("EVP_DecryptUpdate")
            }
            written = Int(outLength)
        }
        let tag = UnsafeMutableRawPointer(mutating: input + bodyLength)
        guard EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, Int32(tagLength), tag) == 1 else {
            throw CryptoError.lastOpenSSLError("EVP_CTRL_GCM_SET_TAG")
        }
        var finalLength: Int32 = 0
        if EVP_DecryptFinal_ex(ctx, out + written, &finalLength) != 1 {
            ERR_clear_error()
            if bodyLength > 0 { OPENSSL_cleanse(out, bodyLength) }
            throw .authenticationFailed
        }
    }

    /// Convenience for small values (wrapped keys, envelopes): returns ciphertext‖tag.
    public static func seal(key: SecureBytes, nonce: [UInt8], aad: [UInt8] = [], plaintext: UnsafeRawBufferPointer) throws(CryptoError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plaintext.count + tagLength)
        let result: Result<Void, CryptoError> = nonce.withUnsafeBytes { n in
            aad.withUnsafeBytes { a in
                out.withUnsafeMutableBytes { o in
                    Result { () throws(CryptoError) in try seal(key: key, nonce: n, aad: a, plaintext: plaintext, output: o) }
                }
            }
        }
        try result.get()
        return out
    }

    /// Convenience that opens into a `SecureBytes` (for wrapped keys).
    public static func openKey(key: SecureBytes, nonce: [UInt8], aad: [UInt8] = [], sealed: [UInt8]) throws(CryptoError) -> SecureBytes {
        guard sealed.count >= tagLength else { throw .authenticationFailed }
        let opened = SecureBytes(count: sealed.count - tagLength)
        let result: Result<Void, CryptoError> = nonce.withUnsafeBytes { n in
            aad.withUnsafeBytes { a in
                sealed.withUnsafeBytes { s in
                    opened.withUnsafeMutableBytes { o in
                        Result { () throws(CryptoError) in try open(key: key, nonce: n, aad: a, sealed: s, output: o) }
                    }
                }
            }
        }
        try result.get()
        return opened
    }

    private static func checkLengths(key: SecureBytes, nonce: UnsafeRawBufferPointer) throws(CryptoError) {
        guard key.count == keyLength else { throw .invalidKeyLength(expected: keyLength, actual: key.count) }
        guard nonce.count == nonceLength else { throw .invalidNonceLength(expected: nonceLength, actual: nonce.count) }
    }
}

/// The calling thread's cipher contexts and its buffer of random bytes for nonces, created on first use and freed
/// when the thread exits.
final class ThreadCiphers {
    private let encryptContext: OpaquePointer
    private let decryptContext: OpaquePointer
    private var encryptKeyIdentity: UInt64 = 0
    private var decryptKeyIdentity: UInt64 = 0
    /// Generator output not yet handed out: `publicRandom[publicRandomUsed...]`.
    private let publicRandom = UnsafeMutableRawBufferPointer.allocate(byteCount: ThreadCiphers.publicRandomSize, alignment: 16)
    private var publicRandomUsed = ThreadCiphers.publicRandomSize
    /// `forkGeneration` when the buffer was filled: a forked child must not hand out its parent's bytes again.
    private var publicRandomGeneration: UInt64 = 0
    static let publicRandomSize = 4096

    private init() throws(CryptoError) {
        guard let e = EVP_CIPHER_CTX_new(), let d = EVP_CIPHER_CTX_new() else {
            throw CryptoError.lastOpenSSLError("EVP_CIPHER_CTX_new")
        }
        encryptContext = e
        decryptContext = d
        guard let cipher = ThreadCiphers.cipher else { throw CryptoError.openssl("AES-256-GCM is not available") }
        guard EVP_EncryptInit_ex(e, cipher, nil, nil, nil) == 1, EVP_DecryptInit_ex(d, cipher, nil, nil, nil) == 1 else {
            throw CryptoError.lastOpenSSLError("EVP_CipherInit_ex")
        }
    }

    deinit {
        EVP_CIPHER_CTX_free(encryptContext)
        EVP_CIPHER_CTX_free(decryptContext)
        memset(publicRandom.baseAddress!, 0, publicRandom.count)
        publicRandom.deallocate()
    }

    func fillPublic(_ buffer: UnsafeMutableRawBufferPointer) throws(CryptoError) {
        guard buffer.count <= publicRandom.count / 4 else {
            // Large requests gain nothing from the buffer.
            guard RAND_bytes(buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(buffer.count)) == 1 else {
                throw CryptoError.lastOpenSSLError("RAND_bytes")
            }
            return
        }
        let generation = ThreadCiphers.forkGeneration.load(ordering: .relaxed)
        if publicRandom.count - publicRandomUsed < buffer.count || publicRandomGeneration != generation {
            guard RAND_bytes(publicRandom.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(publicRandom.count)) == 1 else {
                throw CryptoError.lastOpenSSLError("RAND_bytes")
            }
            publicRandomUsed = 0
            publicRandomGeneration = generation
        }
        let source = publicRandom.baseAddress! + publicRandomUsed
        buffer.baseAddress!.copyMemory(from: source, byteCount: buffer.count)
        memset(source, 0, buffer.count)
        publicRandomUsed += buffer.count
    }

    /// Counts forks: every thread's buffer is refilled in the child (OpenSSL's own generator reseeds there too).
    private static let forkGeneration: Atomic<UInt64> = {
        pthread_atfork(nil, nil) { ThreadCiphers.forkGeneration.add(1, ordering: .relaxed) }
        return Atomic<UInt64>(1)
    }()

    func context(encrypt: Bool, key: SecureBytes) throws(CryptoError) -> OpaquePointer {
        if encrypt {
            if encryptKeyIdentity != key.identity {
                let ok = key.withUnsafeBytes { k in
                    EVP_EncryptInit_ex(encryptContext, nil, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self), nil)
                }
                guard ok == 1 else { throw CryptoError.lastOpenSSLError("EVP_EncryptInit_ex(key)") }
                encryptKeyIdentity = key.identity
            }
            return encryptContext
        } else {
            if decryptKeyIdentity != key.identity {
                let ok = key.withUnsafeBytes { k in
                    EVP_DecryptInit_ex(decryptContext, nil, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self), nil)
                }
                guard ok == 1 else { throw CryptoError.lastOpenSSLError("EVP_DecryptInit_ex(key)") }
                decryptKeyIdentity = key.identity
            }
            return decryptContext
        }
    }

    /// Fetched once: implicit fetches inside every init are measurably slower in OpenSSL 3.
    nonisolated(unsafe) static let cipher: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil)

    nonisolated(unsafe) private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { pointer in
            guard let pointer else { return }
            Unmanaged<ThreadCiphers>.fromOpaque(pointer).release()
        }
        return key
    }()

    static func current() throws(CryptoError) -> ThreadCiphers {
        if let existing = pthread_getspecific(key) {
            return Unmanaged<ThreadCiphers>.fromOpaque(existing).takeUnretainedValue()
        }
        let created = try ThreadCiphers()
        pthread_setspecific(key, Unmanaged.passRetained(created).toOpaque())
        return created
    }
}
