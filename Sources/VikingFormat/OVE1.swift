import VikingCrypto

/// OpenViking's whole-file envelope (DESIGN 4.1), byte-compatible in both directions.
///
/// ```
/// "OVE1" | 0x01 | provider | u16 wrapped-key length (48) | u16 key IV length (12) | u16 data IV length (12)
/// wrapped file key (48) | key IV (12) | data IV (12) | AES-256-GCM(file key, data IV, plaintext)‖tag
/// ```
public enum OVE1 {
    public static let magic: [UInt8] = Array("OVE1".utf8)
    public static let version: UInt8 = 1
    public static let fixedHeaderLength = 12
    public static let headerLength = 12 + 48 + 12 + 12
    /// Header plus the content tag.
    public static let overhead = headerLength + 16

    public struct Header: Sendable, Equatable {
        public var provider: UInt8
        public var wrappedKey: [UInt8]
        public var keyIV: [UInt8]
        public var dataIV: [UInt8]
        public var length: Int { OVE1.fixedHeaderLength + wrappedKey.count + keyIV.count + dataIV.count }
    }

    public static func parseHeader(_ bytes: UnsafeRawBufferPointer) throws(FormatError) -> Header {
        guard bytes.count >= fixedHeaderLength else { throw .truncatedHeader(format: "OVE1", have: bytes.count, need: headerLength) }
        guard bytes.starts(with: magic) else { throw .malformedHeader("magic is not OVE1") }
        guard bytes[4] == version else { throw .unsupportedVersion(format: "OVE1", version: bytes[4]) }
        let wrappedLength = Int(bytes[6]) << 8 | Int(bytes[7])
        let keyIVLength = Int(bytes[8]) << 8 | Int(bytes[9])
        let dataIVLength = Int(bytes[10]) << 8 | Int(bytes[11])
        guard wrappedLength == 48 else { throw .malformedHeader("wrapped key length \(wrappedLength), expected 48") }
        guard keyIVLength == 12, dataIVLength == 12 else { throw .malformedHeader("IV lengths \(keyIVLength)/\(dataIVLength), expected 12/12") }
        let total = fixedHeaderLength + wrappedLength + keyIVLength + dataIVLength
        guard bytes.count >= total else { throw .truncatedHeader(format: "OVE1", have: bytes.count, need: total) }
        var at = fixedHeaderLength
        func take(_ n: Int) -> [UInt8] { defer { at += n }; return Array(bytes[at..<(at + n)]) }
        return Header(provider: bytes[5], wrappedKey: take(wrappedLength), keyIV: take(keyIVLength), dataIV: take(dataIVLength))
    }

    public static func serialize(_ h: Header) -> [UInt8] {
        var out = magic
        out.append(version)
        out.append(h.provider)
        for n in [h.wrappedKey.count, h.keyIV.count, h.dataIV.count] { out.append(UInt8(n >> 8)); out.append(UInt8(n & 0xff)) }
        return out + h.wrappedKey + h.keyIV + h.dataIV
    }

    /// Unwraps the file key: proves the account key without touching the content.
    public static func unwrapFileKey(_ header: Header, accountKey: SecureBytes, account: String) throws(FormatError) -> SecureBytes {
        try VikingFormat.unwrapFileKey(header.wrappedKey, nonce: header.keyIV, aad: [], accountKey: accountKey, account: account)
    }

    /// Opens a whole envelope and returns the plaintext; authenticates everything.
    public static func open(_ envelope: UnsafeRawBufferPointer, accountKey: SecureBytes, account: String) throws(FormatError) -> [UInt8] {
        let header = try parseHeader(envelope)
        let fileKey = try unwrapFileKey(header, accountKey: accountKey, account: account)
        let sealed = UnsafeRawBufferPointer(rebasing: envelope[header.length...])
        guard sealed.count >= 16 else { throw .truncatedHeader(format: "OVE1", have: envelope.count, need: header.length + 16) }
        var plaintext = [UInt8](repeating: 0, count: sealed.count - 16)
        let result: Result<Void, CryptoError> = header.dataIV.withUnsafeBytes { iv in
            plaintext.withUnsafeMutableBytes { out in
                Result { () throws(CryptoError) in try AESGCM.open(key: fileKey, nonce: iv, sealed: sealed, output: out) }
            }
        }
        do { try result.get() } catch { throw .contentAuthenticationFailed }
        return plaintext
    }

    public static func open(_ envelope: [UInt8], accountKey: SecureBytes, account: String) throws(FormatError) -> [UInt8] {
        let result: Result<[UInt8], FormatError> = envelope.withUnsafeBytes { e in
            Result { () throws(FormatError) in try open(e, accountKey: accountKey, account: account) }
        }
        return try result.get()
    }

    /// Seals `plaintext` into a new envelope with a fresh file key and IVs.
    public static func seal(_ plaintext: UnsafeRawBufferPointer, accountKey: SecureBytes, provider: UInt8) throws(FormatError) -> [UInt8] {
        do {
            return try seal(plaintext, accountKey: accountKey, provider: provider, fileKey: try SecureBytes.random(count: 32),
                            keyIV: try SecureRandom.bytes(12), dataIV: try SecureRandom.bytes(12))
        } catch let e as FormatError { throw e } catch { throw .malformedHeader("random: \(error)") }
    }

    public static func seal(_ plaintext: [UInt8], accountKey: SecureBytes, provider: UInt8) throws(FormatError) -> [UInt8] {
        let result: Result<[UInt8], FormatError> = plaintext.withUnsafeBytes { p in
            Result { () throws(FormatError) in try seal(p, accountKey: accountKey, provider: provider) }
        }
        return try result.get()
    }

    /// Deterministic sealing for vectors and tests.
    public static func seal(_ plaintext: UnsafeRawBufferPointer, accountKey: SecureBytes, provider: UInt8,
                            fileKey: SecureBytes, keyIV: [UInt8], dataIV: [UInt8]) throws(FormatError) -> [UInt8] {
        do {
            let wrapped = try fileKey.withUnsafeBytes { (k) throws(CryptoError) in try AESGCM.seal(key: accountKey, nonce: keyIV, plaintext: k) }
            let content = try AESGCM.seal(key: fileKey, nonce: dataIV, plaintext: plaintext)
            return serialize(Header(provider: provider, wrappedKey: wrapped, keyIV: keyIV, dataIV: dataIV)) + content
        } catch {
            throw .malformedHeader("seal: \(error)")
        }
    }

    /// The same content and file key under a new account key (key rotation): only the wrapped key changes.
    public static func rewrap(_ header: Header, fileKey: SecureBytes, newAccountKey: SecureBytes, provider: UInt8) throws(FormatError) -> Header {
        do {
            let iv = try SecureRandom.bytes(12)
            let wrapped = try fileKey.withUnsafeBytes { (k) throws(CryptoError) in try AESGCM.seal(key: newAccountKey, nonce: iv, plaintext: k) }
            return Header(provider: provider, wrappedKey: wrapped, keyIV: iv, dataIV: header.dataIV)
        } catch {
            throw .malformedHeader("rewrap: \(error)")
        }
    }
}
