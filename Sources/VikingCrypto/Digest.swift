import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// HKDF-SHA256 (RFC 5869) through `EVP_KDF`.
public enum HKDF {
    public static func sha256(ikm: SecureBytes, salt: [UInt8], info: [UInt8], length: Int) throws(CryptoError) -> SecureBytes {
        guard let kdf = EVP_KDF_fetch(nil, "HKDF", nil) else { throw CryptoError.lastOpenSSLError("EVP_KDF_fetch(HKDF)") }
        defer { EVP_KDF_free(kdf) }
        guard let ctx = EVP_KDF_CTX_new(kdf) else { throw CryptoError.lastOpenSSLError("EVP_KDF_CTX_new") }
        defer { EVP_KDF_CTX_free(ctx) }
        let output = SecureBytes(count: length)
        var salt = salt
        var info = info
        var digest = Array("SHA256".utf8CString)
        let status: Int32 = ikm.withUnsafeBytes { ikmBytes in
            output.withUnsafeMutableBytes { out in
                digest.withUnsafeMutableBufferPointer { d in
                    salt.withUnsafeMutableBytes { s in
                        info.withUnsafeMutableBytes { i in
                            // Empty salt or info is left out: OpenSSL rejects a NULL octet string.
                            var params: [OSSL_PARAM] = [
                                OSSL_PARAM_construct_utf8_string(ParamName.digest, d.baseAddress, 0),
                                OSSL_PARAM_construct_octet_string(ParamName.key, UnsafeMutableRawPointer(mutating: ikmBytes.baseAddress), ikmBytes.count),
                            ]
                            if s.count > 0 { params.append(OSSL_PARAM_construct_octet_string(ParamName.salt, s.baseAddress, s.count)) }
                            if i.count > 0 { params.append(OSSL_PARAM_construct_octet_string(ParamName.info, i.baseAddress, i.count)) }
                            params.append(OSSL_PARAM_construct_end())
                            return EVP_KDF_derive(ctx, out.baseAddress!.assumingMemoryBound(to: UInt8.self), out.count, &params)
                        }
                    }
                }
            }
        }
        guard status == 1 else { throw CryptoError.lastOpenSSLError("EVP_KDF_derive(HKDF)") }
        return output
    }
}

/// OSSL_PARAM keeps the name pointer, so names must outlive the call: a Swift string passed to a
/// `const char *` parameter is only a temporary.
private enum ParamName {
    static let digest = UnsafePointer(strdup(OSSL_KDF_PARAM_DIGEST)!)
    static let key = UnsafePointer(strdup(OSSL_KDF_PARAM_KEY)!)
    static let salt = UnsafePointer(strdup(OSSL_KDF_PARAM_SALT)!)
    static let info = UnsafePointer(strdup(OSSL_KDF_PARAM_INFO)!)
}

public enum SHA256 {
    public static func hash(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let base = data.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        _ = EVP_Digest(base, data.count, &out, &length, EVP_sha256(), nil)
        return out
    }

    public static func hash(_ data: [UInt8]) -> [UInt8] { data.withUnsafeBytes { hash($0) } }

    public static func hex(_ data: [UInt8]) -> String { Hex.encode(hash(data)) }
}

public enum HMACSHA256 {
    public static func authenticate(key: UnsafeRawBufferPointer, message: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let keyBase = key.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        let messageBase = message.baseAddress?.assumingMemoryBound(to: UInt8.self)
        _ = HMAC(EVP_sha256(), keyBase, Int32(key.count), messageBase ?? UnsafePointer(bitPattern: 1)!, message.count, &out, &length)
        return out
    }

    public static func authenticate(key: [UInt8], message: [UInt8]) -> [UInt8] {
        key.withUnsafeBytes { k in message.withUnsafeBytes { m in authenticate(key: k, message: m) } }
    }

    public static func authenticate(key: SecureBytes, message: [UInt8]) -> [UInt8] {
        key.withUnsafeBytes { k in message.withUnsafeBytes { m in authenticate(key: k, message: m) } }
    }
}

public enum Hex {
    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0x0f)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes hex (either case). Returns nil on odd length or a non-hex character.
    public static func decode<C: Collection>(_ text: C) -> [UInt8]? where C.Element == UInt8 {
        guard text.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(text.count / 2)
        var high: UInt8? = nil
        for c in text {
            guard let v = nibble(c) else { return nil }
            if let h = high { out.append(h << 4 | v); high = nil } else { high = v }
        }
        return out
    }

    public static func decode(_ text: String) -> [UInt8]? { decode(Array(text.utf8)) }

    /// Decodes hex straight into a secure buffer (for root keys read from files).
    public static func decodeSecure(_ text: UnsafeRawBufferPointer) -> SecureBytes? {
        guard text.count % 2 == 0 else { return nil }
        let out = SecureBytes(count: text.count / 2)
        let ok = out.withUnsafeMutableBytes { dst -> Bool in
            for i in 0..<(text.count / 2) {
                guard let h = nibble(text[2 * i]), let l = nibble(text[2 * i + 1]) else { return false }
                dst[i] = h << 4 | l
            }
            return true
        }
        return ok ? out : nil
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
