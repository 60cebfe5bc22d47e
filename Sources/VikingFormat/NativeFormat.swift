import VikingCrypto

/// The native chunked format ("VKFS", docs/format.md): a 96-byte header carrying a random file key wrapped
/// under the account key, then fixed-size blocks, each sealed on its own so any offset can be read or written.
public enum NativeFormat {
    public static let magic: [UInt8] = Array("VKFS".utf8)
    public static let version: UInt8 = 1
    public static let headerLength = 96
    /// Bytes of header covered by the key-wrap AAD (everything before the wrapped key).
    static let authenticatedHeaderLength = 48
    public static let nonceLength = 12
    public static let tagLength = 16
    /// Per-block overhead: nonce and tag.
    public static let blockOverhead = nonceLength + tagLength
    public static let fileIDLength = 16
    public static let rootKeyIDLength = 8
    /// 4 KiB blocks: see docs/format.md for the measurement behind the choice.
    public static let defaultBlockShift: UInt8 = 12
    public static let blockShiftRange: ClosedRange<UInt8> = 12...20
}

/// Where plaintext bytes live in a native backing file, for one block size.
public struct NativeLayout: Sendable, Equatable {
    public let blockSize: Int
    public var storedBlockSize: Int { blockSize + NativeFormat.blockOverhead }

    public init(blockShift: UInt8) { blockSize = 1 << Int(blockShift) }

    /// Offset of block `index`'s nonce in the backing file.
    public func storedOffset(ofBlock index: Int64) -> Int64 {
        Int64(NativeFormat.headerLength) + index * Int64(storedBlockSize)
    }

    /// Backing size for a plaintext size: header, full blocks, and a partial block with its own overhead.
    public func backingSize(forPlaintext size: Int64) -> Int64 {
        let full = size / Int64(blockSize)
        let rest = size % Int64(blockSize)
        return Int64(NativeFormat.headerLength) + full * Int64(storedBlockSize) + (rest > 0 ? rest + Int64(NativeFormat.blockOverhead) : 0)
    }

    /// Plaintext size for a backing size. A trailing fragment too short to hold any plaintext (1...28 bytes) is
    /// damage; it counts as nothing here, and reading that block reports it.
    public func plaintextSize(forBacking size: Int64) -> Int64 {
        let body = size - Int64(NativeFormat.headerLength)
        guard body > 0 else { return 0 }
        let full = body / Int64(storedBlockSize)
        let rest = body % Int64(storedBlockSize)
        return full * Int64(blockSize) + max(0, rest - Int64(NativeFormat.blockOverhead))
    }
}

/// The parsed 96-byte native header.
///
/// ```
/// 0   4  magic "VKFS"        8  4  reserved, zero       28  8  root key ID
/// 4   1  version 0x01       12 16  file ID              36 12  key nonce
/// 5   1  log2(block size)                                48 48  wrapped file key (AES-256-GCM, ciphertext‖tag)
/// 6   2  header length (96, big-endian)
/// ```
public struct NativeHeader: Sendable, Equatable {
    public var blockShift: UInt8
    public var fileID: [UInt8]
    public var rootKeyID: [UInt8]
    public var keyNonce: [UInt8]
    public var wrappedKey: [UInt8]

    public var layout: NativeLayout { NativeLayout(blockShift: blockShift) }

    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(FormatError) -> NativeHeader {
        guard bytes.count >= 8 else { throw .truncatedHeader(format: "VKFS", have: bytes.count, need: NativeFormat.headerLength) }
        guard bytes.starts(with: NativeFormat.magic) else { throw .malformedHeader("magic is not VKFS") }
        guard bytes[4] == NativeFormat.version else { throw .unsupportedVersion(format: "VKFS", version: bytes[4]) }
        let shift = bytes[5]
        guard NativeFormat.blockShiftRange.contains(shift) else { throw .malformedHeader("block size 2^\(shift) out of range") }
        let length = Int(bytes[6]) << 8 | Int(bytes[7])
        guard length == NativeFormat.headerLength else { throw .malformedHeader("header length \(length), expected \(NativeFormat.headerLength)") }
        guard bytes.count >= length else { throw .truncatedHeader(format: "VKFS", have: bytes.count, need: length) }
        guard bytes[8] == 0, bytes[9] == 0, bytes[10] == 0, bytes[11] == 0 else { throw .malformedHeader("reserved bytes are not zero") }
        return NativeHeader(blockShift: shift,
                            fileID: Array(bytes[12..<28]),
                            rootKeyID: Array(bytes[28..<36]),
                            keyNonce: Array(bytes[36..<48]),
                            wrappedKey: Array(bytes[48..<96]))
    }

    public static func parse(_ bytes: [UInt8]) throws(FormatError) -> NativeHeader {
        let result: Result<NativeHeader, FormatError> = bytes.withUnsafeBytes { b in Result { () throws(FormatError) in try parse(b) } }
        return try result.get()
    }

    /// The first 48 bytes: everything the key wrap authenticates besides the account ID.
    var authenticatedPrefix: [UInt8] {
        var out = NativeFormat.magic
        out.append(NativeFormat.version)
        out.append(blockShift)
        out.append(UInt8(NativeFormat.headerLength >> 8))
        out.append(UInt8(NativeFormat.headerLength & 0xff))
        out += [0, 0, 0, 0]
        out += fileID
        out += rootKeyID
        out += keyNonce
        return out
    }

    public func serialized() -> [UInt8] { authenticatedPrefix + wrappedKey }

    /// AAD of the key wrap: the header prefix and the account ID, so a header copied into another account's
    /// subtree fails to open even if both accounts' keys were somehow equal.
    static func wrapAAD(prefix: [UInt8], account: String) -> [UInt8] { prefix + Array(account.utf8) }
}

/// An opened native file: its file key and ID, ready to seal and open blocks.
public final class NativeFileCipher: @unchecked Sendable {
    public let header: NativeHeader
    public let layout: NativeLayout
    let fileKey: SecureBytes

    init(header: NativeHeader, fileKey: SecureBytes) {
        self.header = header
        self.layout = header.layout
        self.fileKey = fileKey
    }

    /// A new file: fresh random file key, file ID and key nonce, wrapped under `accountKey`.
    public static func create(accountKey: SecureBytes, account: String, rootKeyID: [UInt8],
                              blockShift: UInt8 = NativeFormat.defaultBlockShift) throws(FormatError) -> NativeFileCipher {
        do {
            return try create(accountKey: accountKey, account: account, rootKeyID: rootKeyID, blockShift: blockShift,
                              fileKey: try SecureBytes.random(count: 32), fileID: try SecureRandom.bytes(16),
                              keyNonce: try SecureRandom.bytes(12))
        } catch let e as FormatError { throw e } catch { throw .malformedHeader("random: \(error)") }
    }

    /// Deterministic creation, for known-answer vectors and re-wrapping during key rotation.
    public static func create(accountKey: SecureBytes, account: String, rootKeyID: [UInt8], blockShift: UInt8,
                              fileKey: SecureBytes, fileID: [UInt8], keyNonce: [UInt8]) throws(FormatError) -> NativeFileCipher {
        guard fileID.count == NativeFormat.fileIDLength, rootKeyID.count == NativeFormat.rootKeyIDLength,
              keyNonce.count == NativeFormat.nonceLength, fileKey.count == 32 else {
            throw .malformedHeader("bad field length")
        }
        var header = NativeHeader(blockShift: blockShift, fileID: fileID, rootKeyID: rootKeyID, keyNonce: keyNonce, wrappedKey: [])
        let aad = NativeHeader.wrapAAD(prefix: header.authenticatedPrefix, account: account)
        do {
            header.wrappedKey = try fileKey.withUnsafeBytes { (k) throws(CryptoError) in
                try AESGCM.seal(key: accountKey, nonce: keyNonce, aad: aad, plaintext: k)
            }
        } catch { throw .malformedHeader("key wrap: \(error)") }
        return NativeFileCipher(header: header, fileKey: fileKey)
    }

    /// Opens a header with the account key of the account the file lives in.
    public static func open(header: NativeHeader, accountKey: SecureBytes, account: String) throws(FormatError) -> NativeFileCipher {
        let aad = NativeHeader.wrapAAD(prefix: header.authenticatedPrefix, account: account)
        let key = try unwrapFileKey(header.wrappedKey, nonce: header.keyNonce, aad: aad, accountKey: accountKey, account: account)
        return NativeFileCipher(header: header, fileKey: key)
    }

    /// The same file key under a different root key's account key (key rotation): contents stay as they are.
    public func rewrapped(accountKey: SecureBytes, account: String, rootKeyID: [UInt8]) throws(FormatError) -> NativeHeader {
        let nonce: [UInt8]
        do { nonce = try SecureRandom.bytes(12) } catch { throw .malformedHeader("random: \(error)") }
        return try NativeFileCipher.create(accountKey: accountKey, account: account, rootKeyID: rootKeyID,
                                           blockShift: header.blockShift, fileKey: fileKey, fileID: header.fileID,
                                           keyNonce: nonce).header
    }

    /// Seals one block's plaintext (at most `blockSize` bytes) into `output` as nonce‖ciphertext‖tag.
    /// Returns the stored length.
    @discardableResult
    public func sealBlock(index: UInt64, plaintext: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) throws(FormatError) -> Int {
        precondition(plaintext.count <= layout.blockSize && output.count >= plaintext.count + NativeFormat.blockOverhead)
        let nonce = UnsafeMutableRawBufferPointer(rebasing: output[0..<NativeFormat.nonceLength])
        do {
            repeat { try SecureRandom.fillPublic(nonce) } while nonce.allSatisfy { $0 == 0 }
        } catch { throw .malformedHeader("random: \(error)") }
        return try sealBlock(index: index, nonce: UnsafeRawBufferPointer(nonce), plaintext: plaintext, output: output)
    }

    /// Deterministic variant for known-answer vectors: `nonce` is copied to the front of `output`.
    @discardableResult
    public func sealBlock(index: UInt64, nonce: UnsafeRawBufferPointer, plaintext: UnsafeRawBufferPointer,
                          output: UnsafeMutableRawBufferPointer) throws(FormatError) -> Int {
        let stored = plaintext.count + NativeFormat.blockOverhead
        if nonce.baseAddress != UnsafeRawPointer(output.baseAddress) {
            output.baseAddress!.copyMemory(from: nonce.baseAddress!, byteCount: NativeFormat.nonceLength)
        }
        let body = UnsafeMutableRawBufferPointer(rebasing: output[NativeFormat.nonceLength..<stored])
        let nonceView = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(output)[0..<NativeFormat.nonceLength])
        let result: Result<Void, CryptoError> = withBlockAAD(index) { aad in
            Result { () throws(CryptoError) in try AESGCM.seal(key: fileKey, nonce: nonceView, aad: aad, plaintext: plaintext, output: body) }
        }
        do { try result.get() } catch { throw .malformedHeader("seal: \(error)") }
        return stored
    }

    /// Opens one stored block (nonce‖ciphertext‖tag) into `output`; returns the plaintext length.
    /// An all-zero stored block is a hole (left by truncate-up or a write past the end) and reads as zeros.
    public func openBlock(index: UInt64, stored: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) throws(FormatError) -> Int {
        guard stored.count > NativeFormat.blockOverhead else {
            throw .truncatedBlock(index: index, storedBytes: stored.count)
        }
        let plainLength = stored.count - NativeFormat.blockOverhead
        if isAllZero(UnsafeRawBufferPointer(rebasing: stored[0..<NativeFormat.nonceLength])) && isAllZero(stored) {
            output.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0, count: plainLength)
            return plainLength
        }
        let nonce = UnsafeRawBufferPointer(rebasing: stored[0..<NativeFormat.nonceLength])
        let body = UnsafeRawBufferPointer(rebasing: stored[NativeFormat.nonceLength...])
        let result: Result<Void, CryptoError> = withBlockAAD(index) { aad in
            Result { () throws(CryptoError) in try AESGCM.open(key: fileKey, nonce: nonce, aad: aad, sealed: body, output: output) }
        }
        do { try result.get() } catch { throw .blockAuthenticationFailed(index: index) }
        return plainLength
    }

    /// Block AAD: file ID ‖ block index (u64 big-endian). Binds each block to its file and position.
    private func withBlockAAD<R>(_ index: UInt64, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeTemporaryAllocation(byteCount: 24, alignment: 8) { aad in
            header.fileID.withUnsafeBytes { id in aad.baseAddress!.copyMemory(from: id.baseAddress!, byteCount: 16) }
            var be = index.bigEndian
            withUnsafeBytes(of: &be) { aad.baseAddress!.advanced(by: 16).copyMemory(from: $0.baseAddress!, byteCount: 8) }
            return body(UnsafeRawBufferPointer(aad))
        }
    }
}

/// Unwraps a 32-byte file key sealed under an account key (both formats): an authentication failure means the
/// wrong root key, an altered header, or a header from another account.
func unwrapFileKey(_ wrapped: [UInt8], nonce: [UInt8], aad: [UInt8], accountKey: SecureBytes, account: String) throws(FormatError) -> SecureBytes {
    let key: SecureBytes
    do {
        key = try AESGCM.openKey(key: accountKey, nonce: nonce, aad: aad, sealed: wrapped)
    } catch .authenticationFailed {
        throw .keyUnwrapFailed(account: account)
    } catch {
        throw .malformedHeader("\(error)")
    }
    guard key.count == 32 else { throw .malformedHeader("file key length \(key.count), expected 32") }
    return key
}

@inline(__always)
func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    var acc: UInt8 = 0
    for b in bytes { acc |= b }
    return acc == 0
}
