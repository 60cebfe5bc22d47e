import VikingCrypto
import VikingKeys

/// Whole-file operations over either sealed format, choosing the right root key from a key ring.
/// The mount's data path does not use these (it works block by block); admin commands and small files do.
public enum SealedFile {
    /// Opens a native header with whichever ring key its root key ID names.
    public static func openNative(_ header: NativeHeader, account: String, keyRing: KeyRing) throws(FormatError) -> (cipher: NativeFileCipher, keyIndex: Int) {
        guard let index = keyRing.keyIndex(forKeyID: header.rootKeyID) else {
            throw .unknownRootKey(keyID: Hex.encode(header.rootKeyID))
        }
        let accountKey: SecureBytes
        do { accountKey = try keyRing.accountKey(account, keyIndex: index) } catch { throw .malformedHeader("\(error)") }
        return (try NativeFileCipher.open(header: header, accountKey: accountKey, account: account), index)
    }

    /// Unwraps an OVE1 file key; OVE1 records no key ID, so each ring key is tried, primary first.
    public static func unwrapOVE1(_ header: OVE1.Header, account: String, keyRing: KeyRing) throws(FormatError) -> (fileKey: SecureBytes, keyIndex: Int) {
        for index in keyRing.allKeys.indices {
            let accountKey: SecureBytes
            do { accountKey = try keyRing.accountKey(account, keyIndex: index) } catch { throw .malformedHeader("\(error)") }
            if let key = try? OVE1.unwrapFileKey(header, accountKey: accountKey, account: account) { return (key, index) }
        }
        throw .keyUnwrapFailed(account: account)
    }

    /// The plaintext of a whole backing file, fully authenticated. Legacy and empty files come back as they are.
    public static func openWhole(_ bytes: [UInt8], account: String, keyRing: KeyRing) throws(FormatError) -> (kind: FileKind, plaintext: [UInt8]) {
        let kind = FileKind.classify(prefix: Array(bytes.prefix(FileKind.probeLength)), size: Int64(bytes.count))
        switch kind {
        case .empty, .legacy:
            return (kind, bytes)
        case .ove1:
            let result: Result<[UInt8], FormatError> = bytes.withUnsafeBytes { b in
                Result { () throws(FormatError) in
                    let header = try OVE1.parseHeader(b)
                    let (fileKey, _) = try unwrapOVE1(header, account: account, keyRing: keyRing)
                    let sealed = UnsafeRawBufferPointer(rebasing: b[header.length...])
                    guard sealed.count >= 16 else { throw FormatError.truncatedHeader(format: "OVE1", have: b.count, need: header.length + 16) }
                    var plaintext = [UInt8](repeating: 0, count: sealed.count - 16)
                    let opened: Result<Void, CryptoError> = header.dataIV.withUnsafeBytes { iv in
                        plaintext.withUnsafeMutableBytes { out in
                            Result { () throws(CryptoError) in try AESGCM.open(key: fileKey, nonce: iv, sealed: sealed, output: out) }
                        }
                    }
                    do { try opened.get() } catch { throw FormatError.contentAuthenticationFailed }
                    return plaintext
                }
            }
            return (kind, try result.get())
        case .native:
            let header = try NativeHeader.parse(bytes)
            let (cipher, _) = try openNative(header, account: account, keyRing: keyRing)
            return (kind, try cipher.openWhole(bytes))
        }
    }

    /// A whole new sealed file in `kind` (`.native` or `.ove1`) under the ring's primary key.
    public static func sealWhole(_ plaintext: [UInt8], kind: FileKind, account: String, keyRing: KeyRing,
                                 blockShift: UInt8 = NativeFormat.defaultBlockShift) throws(FormatError) -> [UInt8] {
        let accountKey: SecureBytes
        do { accountKey = try keyRing.accountKey(account) } catch { throw .malformedHeader("\(error)") }
        switch kind {
        case .ove1:
            return try OVE1.seal(plaintext, accountKey: accountKey, provider: keyRing.providerKind.rawValue)
        case .native:
            let cipher = try NativeFileCipher.create(accountKey: accountKey, account: account,
                                                     rootKeyID: keyRing.primary.keyID, blockShift: blockShift)
            return try cipher.sealWhole(plaintext)
        case .empty, .legacy:
            throw .malformedHeader("cannot seal into \(kind)")
        }
    }
}

extension NativeFileCipher {
    /// Header and every block of `plaintext`, as one byte array.
    public func sealWhole(_ plaintext: [UInt8]) throws(FormatError) -> [UInt8] {
        let total = Int(layout.backingSize(forPlaintext: Int64(plaintext.count)))
        var out = header.serialized()
        out.append(contentsOf: repeatElement(0, count: total - out.count))
        let result: Result<Void, FormatError> = plaintext.withUnsafeBytes { p in
            out.withUnsafeMutableBytes { o in
                Result { () throws(FormatError) in
                    var index = 0
                    var at = 0
                    while at < p.count {
                        let n = min(layout.blockSize, p.count - at)
                        let start = Int(layout.storedOffset(ofBlock: Int64(index)))
                        try sealBlock(index: UInt64(index), plaintext: UnsafeRawBufferPointer(rebasing: p[at..<(at + n)]),
                                      output: UnsafeMutableRawBufferPointer(rebasing: o[start..<(start + n + NativeFormat.blockOverhead)]))
                        at += n
                        index += 1
                    }
                }
            }
        }
        try result.get()
        return out
    }

    /// Every block of a whole native file, authenticated, as plaintext.
    public func openWhole(_ bytes: [UInt8]) throws(FormatError) -> [UInt8] {
        let size = Int(layout.plaintextSize(forBacking: Int64(bytes.count)))
        var plaintext = [UInt8](repeating: 0, count: size)
        let result: Result<Void, FormatError> = bytes.withUnsafeBytes { b in
            plaintext.withUnsafeMutableBytes { p in
                Result { () throws(FormatError) in
                    var index: Int64 = 0
                    var offset = Int(layout.storedOffset(ofBlock: 0))
                    while offset < b.count {
                        let end = min(offset + layout.storedBlockSize, b.count)
                        let plainStart = Int(index) * layout.blockSize
                        let room = UnsafeMutableRawBufferPointer(rebasing: p[plainStart..<min(plainStart + layout.blockSize, p.count)])
                        let stored = UnsafeRawBufferPointer(rebasing: b[offset..<end])
                        guard stored.count > NativeFormat.blockOverhead else { throw FormatError.truncatedBlock(index: UInt64(index), storedBytes: stored.count) }
                        _ = try openBlock(index: UInt64(index), stored: stored, output: room)
                        offset = end
                        index += 1
                    }
                }
            }
        }
        try result.get()
        return plaintext
    }
}
