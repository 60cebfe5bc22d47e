import CArgon2
import VikingCrypto

/// Argon2id hashing of API keys, compatible with OpenViking (Python argon2-cffi `PasswordHasher` with
/// `memory_cost=65536, time_cost=3, parallelism=2, salt_len=16, hash_len=32`).
///
/// Hashes are computed with libargon2's `argon2id_hash_raw`; the PHC string around them is written and parsed
/// here (`PHCString`), so verification uses the parameters stored in each hash, whatever they are, within
/// `PHCString.Limits`.
public enum APIKeyHasher {
    public static let memoryKiB = 65536, iterations = 3, parallelism = 2, saltLength = 16, hashLength = 32

    /// Hashes `key` with a fresh random salt and OpenViking's parameters:
    /// `$argon2id$v=19$m=65536,t=3,p=2$<salt>$<hash>` (base64 without padding).
    public static func hash(_ key: [UInt8]) throws -> String {
        var salt: [UInt8]
        do {
            salt = try SecureRandom.bytes(saltLength)
        } catch {
            throw APIKeyError.randomFailure(error.description)
        }
        var raw = try compute(key: key, salt: salt, m: memoryKiB, t: iterations, p: parallelism, length: hashLength)
        defer { wipe(&raw); wipe(&salt) }
        return try PHCString(m: memoryKiB, t: iterations, p: parallelism, salt: salt, hash: raw).encoded
    }

    /// Whether `key` matches the Argon2id hash `phc`. Returns false on a mismatch; throws `APIKeyError` if `phc`
    /// is not a well-formed argon2id v=19 PHC string within `PHCString.Limits`, or if libargon2 fails.
    public static func verify(_ key: [UInt8], phc: String) throws -> Bool {
        let parsed = try PHCString(parsing: phc)
        var computed = try compute(key: key, salt: parsed.salt, m: parsed.m, t: parsed.t, p: parsed.p,
                                   length: parsed.hash.count)
        defer { wipe(&computed) }
        return ConstantTime.equals(computed, parsed.hash)
    }

    /// Whether `value` is an Argon2id PHC string this module can verify (as opposed to a plaintext key).
    public static func isHash(_ value: String) -> Bool {
        guard value.hasPrefix("$\(PHCString.supportedVariant)$") else { return false }
        return (try? PHCString(parsing: value)) != nil
    }

    /// The key's first 8 characters, as OpenViking stores `key_prefix` (Python `key[:8]`, so Unicode code
    /// points rather than grapheme clusters); the whole key if it is shorter.
    public static func keyPrefix(_ key: String) -> String {
        var scalars = String.UnicodeScalarView()
        scalars.append(contentsOf: key.unicodeScalars.prefix(8))
        return String(scalars)
    }

    /// Raw Argon2id (version 0x13) of `key`; the caller wipes the result.
    static func compute(key: [UInt8], salt: [UInt8], m: Int, t: Int, p: Int, length: Int) throws -> [UInt8] {
        guard key.count <= UInt32.max else { throw APIKeyError.keyTooLong(key.count) }
        guard let m32 = UInt32(exactly: m), let t32 = UInt32(exactly: t), let p32 = UInt32(exactly: p),
              length > 0, salt.count > 0 else {
            throw APIKeyError.malformed("Argon2 parameters not representable (m=\(m), t=\(t), p=\(p))")
        }
        var out = [UInt8](repeating: 0, count: length)
        let code: Int32 = key.withUnsafeBytes { k in
            salt.withUnsafeBytes { s in
                out.withUnsafeMutableBytes { o in
                    argon2id_hash_raw(t32, m32, p32, k.baseAddress, k.count, s.baseAddress, s.count,
                                      o.baseAddress, o.count)
                }
            }
        }
        guard code == ARGON2_OK.rawValue else {
            wipe(&out)
            let message = argon2_error_message(code).map { String(cString: $0) } ?? "unknown error"
            throw APIKeyError.argon2(code: code, message: message)
        }
        return out
    }
}
