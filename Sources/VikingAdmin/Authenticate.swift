import VikingCrypto
import VikingFormat
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// What authenticating one backing file found.
struct AuthenticationReport: Sendable {
    var kind: FileKind
    /// Index in the ring's `allKeys` of the root key that opened the file (nil when none did or not sealed).
    var keyIndex: Int?
    /// Empty when the file authenticates completely.
    var problems: [String] = []
    /// True when the only trouble is a root key the ring does not hold (not damage to the file itself).
    var unknownKey = false
    var plaintextSize: Int64 = 0

    var authenticates: Bool { problems.isEmpty }
}

/// The classification of an open file from its first bytes.
func probeKind(_ fd: Int32, size: Int64) -> Result<FileKind, SystemError> {
    if size == 0 { return .success(.empty) }
    return Posix.readPrefix(fd, count: FileKind.probeLength).map { FileKind.classify(prefix: $0, size: size) }
}

/// Authenticates sealed backing files completely (every block of a native file, the whole OVE1 envelope) and
/// says precisely what is wrong when they do not: which block, a bad header, a header from another account.
/// Native files are read a chunk at a time; only an OVE1 envelope is held whole (the format is one GCM message).
struct FileAuthenticator: Sendable {
    let ring: KeyRing
    /// Accounts to try when a file key does not unwrap, to recognize a file moved between accounts.
    let accounts: [String]

    /// Plaintext bytes per read when walking a native file.
    static let chunkBytes = 1 << 20

    /// Authenticates the file open at `fd`. `sink` receives plaintext in order, each piece only after it
    /// authenticated; it returns false to stop (a failed write). I/O failures come back as `.failure`.
    func authenticate(fd: Int32, size: Int64, kind: FileKind, account: String,
                      sink: ((UnsafeRawBufferPointer) -> Bool)? = nil) -> Result<AuthenticationReport, SystemError> {
        switch kind {
        case .empty, .legacy:
            return .success(AuthenticationReport(kind: kind, plaintextSize: size))
        case .native:
            return authenticateNative(fd: fd, size: size, account: account, sink: sink)
        case .ove1:
            return authenticateOVE1(fd: fd, size: size, account: account, sink: sink)
        }
    }

    private func authenticateNative(fd: Int32, size: Int64, account: String,
                                    sink: ((UnsafeRawBufferPointer) -> Bool)?) -> Result<AuthenticationReport, SystemError> {
        var report = AuthenticationReport(kind: .native)
        let headerBytes: [UInt8]
        switch Posix.readPrefix(fd, count: NativeFormat.headerLength) {
        case .failure(let e): return .failure(e)
        case .success(let b): headerBytes = b
        }
        let header: NativeHeader
        do { header = try NativeHeader.parse(headerBytes) } catch {
            report.problems.append("bad header: \(error)")
            return .success(report)
        }
        let layout = header.layout
        report.plaintextSize = layout.plaintextSize(forBacking: size)
        let body = size - Int64(NativeFormat.headerLength)
        let cipher: NativeFileCipher
        do {
            let opened = try SealedFile.openNative(header, account: account, keyRing: ring)
            cipher = opened.cipher
            report.keyIndex = opened.keyIndex
        } catch .unknownRootKey(let id) {
            report.problems.append("sealed under root key \(id), which is not among the given keys")
            report.unknownKey = true
            return .success(report)
        } catch .keyUnwrapFailed {
            report.problems.append(unwrapFailure(account: account, native: header, ove1: nil))
            return .success(report)
        } catch {
            report.problems.append("bad header: \(error)")
            return .success(report)
        }

        let stored = layout.storedBlockSize
        let blocksPerChunk = max(1, FileAuthenticator.chunkBytes / layout.blockSize)
        let capacity = min(blocksPerChunk * stored, Int(max(0, body)))
        var buffer = [UInt8](repeating: 0, count: max(capacity, 1))
        var plain = [UInt8](repeating: 0, count: layout.blockSize)
        defer { wipe(&plain) }
        var offset = Int64(NativeFormat.headerLength)
        var index: Int64 = 0
        var failing: [Int64] = []
        var truncatedAt: (index: Int64, bytes: Int)? = nil
        var stopped = false
        outer: while offset < size {
            let want = Int(min(Int64(capacity), size - offset))
            let got: Int
            switch buffer.withUnsafeMutableBytes({ Posix.pread(fd, UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), at: offset) }) {
            case .failure(let e): return .failure(e)
            case .success(let n): got = n
            }
            if got == 0 { break }
            var p = 0
            while p < got {
                let piece = min(stored, got - p)
                if piece <= NativeFormat.blockOverhead {
                    truncatedAt = (index, piece)
                    index += 1
                    break outer
                }
                let opened: Result<Int, FormatError> = buffer.withUnsafeBytes { b in
                    plain.withUnsafeMutableBytes { out in
                        Result { () throws(FormatError) in
                            try cipher.openBlock(index: UInt64(index), stored: UnsafeRawBufferPointer(rebasing: b[p..<(p + piece)]), output: out)
                        }
                    }
                }
                switch opened {
                case .success(let n):
                    if let sink, failing.isEmpty, !stopped {
                        if !plain.withUnsafeBytes({ sink(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) { stopped = true }
                    }
                case .failure:
                    failing.append(index)
                }
                p += piece
                index += 1
            }
            offset += Int64(got)
            if got < want { break }
        }
        if !failing.isEmpty {
            let shown = failing.prefix(8).map(String.init).joined(separator: ", ") + (failing.count > 8 ? ", ..." : "")
            let noun = failing.count == 1 ? "block \(shown) of \(index) fails" : "\(failing.count) blocks of \(index) fail (\(shown))"
            var message = "\(noun) authentication (tampered, swapped between files or positions, or rolled back)"
            if failing.last == index - 1, (size - Int64(NativeFormat.headerLength)) % Int64(stored) != 0 {
                message += "; the last block is partial, so the file may be truncated"
            }
            report.problems.append(message)
        }
        if let t = truncatedAt {
            report.problems.append("truncated: the last block (\(t.index)) holds only \(t.bytes) bytes, less than a block's \(NativeFormat.blockOverhead)-byte overhead")
        }
        return .success(report)
    }

    private func authenticateOVE1(fd: Int32, size: Int64, account: String,
                                  sink: ((UnsafeRawBufferPointer) -> Bool)?) -> Result<AuthenticationReport, SystemError> {
        var report = AuthenticationReport(kind: .ove1)
        var bytes: [UInt8]
        switch Posix.readToEnd(fd, sizeHint: Int(size)) {
        case .failure(let e): return .failure(e)
        case .success(let b): bytes = b
        }
        report.plaintextSize = max(0, Int64(bytes.count) - Int64(OVE1.overhead))
        let parsed: Result<OVE1.Header, FormatError> = bytes.withUnsafeBytes { b in
            Result { () throws(FormatError) in try OVE1.parseHeader(b) }
        }
        let header: OVE1.Header
        switch parsed {
        case .failure(let e):
            report.problems.append("bad header: \(e)")
            return .success(report)
        case .success(let h): header = h
        }
        let fileKey: SecureBytes
        do {
            let unwrapped = try SealedFile.unwrapOVE1(header, account: account, keyRing: ring)
            fileKey = unwrapped.fileKey
            report.keyIndex = unwrapped.keyIndex
        } catch {
            report.problems.append(unwrapFailure(account: account, native: nil, ove1: header))
            return .success(report)
        }
        guard bytes.count >= header.length + AESGCM.tagLength else {
            report.problems.append("truncated: \(bytes.count) bytes, an OVE1 envelope holds at least \(header.length + AESGCM.tagLength)")
            return .success(report)
        }
        var plaintext = [UInt8](repeating: 0, count: bytes.count - header.length - AESGCM.tagLength)
        defer { wipe(&plaintext) }
        let opened: Result<Void, CryptoError> = header.dataIV.withUnsafeBytes { iv in
            bytes.withUnsafeBytes { b in
                plaintext.withUnsafeMutableBytes { out in
                    Result { () throws(CryptoError) in
                        try AESGCM.open(key: fileKey, nonce: iv, sealed: UnsafeRawBufferPointer(rebasing: b[header.length...]), output: out)
                    }
                }
            }
        }
        if case .failure = opened {
            report.problems.append("content fails authentication (tampered or truncated; OVE1 authenticates the file as a whole)")
            return .success(report)
        }
        if let sink { _ = plaintext.withUnsafeBytes { sink($0) } }
        return .success(report)
    }

    /// Why a file key did not unwrap: names the account the header really belongs to when one of the tree's
    /// accounts opens it.
    func unwrapFailure(account: String, native: NativeHeader?, ove1: OVE1.Header?) -> String {
        for other in accounts where other != account {
            for index in ring.allKeys.indices {
                guard let key = try? ring.accountKey(other, keyIndex: index) else { continue }
                let opens: Bool
                if let native {
                    opens = (try? NativeFileCipher.open(header: native, accountKey: key, account: other)) != nil
                } else if let ove1 {
                    opens = (try? OVE1.unwrapFileKey(ove1, accountKey: key, account: other)) != nil
                } else {
                    opens = false
                }
                if opens {
                    return "wrong account: the file key is sealed for account '\(other)', but the file lies in account '\(account)' (moved or copied between accounts)"
                }
            }
        }
        if native != nil {
            return "bad header: the file key does not unwrap under account '\(account)' (the header was altered)"
        }
        return "the file key does not unwrap under account '\(account)' with the given keys (wrong root key, altered header, or a file from another account)"
    }

    /// What `checkXattrs` found.
    struct XattrCheck {
        /// One message per sealed attribute that fails to open.
        var problems: [String] = []
        /// Plaintext `user.*` attributes (not sealed; `vikingfs seal` seals them).
        var plaintext = 0
    }

    /// Opens every sealed extended attribute (`user.vikingfs.*`) and counts plaintext `user.*` ones.
    func checkXattrs(fd: Int32, account: String) -> Result<XattrCheck, SystemError> {
        let names: [[UInt8]]
        switch Posix.listXattrs(fd) {
        case .failure(let e): return .failure(e)
        case .success(let n): names = n
        }
        var check = XattrCheck()
        for name in names where name.starts(with: XattrCodec.visiblePrefixBytes) {
            guard name.starts(with: XattrCodec.backingPrefixBytes) else {
                check.plaintext += 1
                continue
            }
            let backing = String(decoding: name, as: UTF8.self)
            guard let visible = XattrCodec.visibleName(fromBacking: backing) else { continue }
            let value: [UInt8]
            switch Posix.getXattr(fd, name) {
            case .failure(let e) where e.code == ENODATA: continue
            case .failure(let e): return .failure(e)
            case .success(let v): value = v
            }
            if openXattr(value, visibleName: visible, account: account) == nil {
                check.problems.append("extended attribute \(visible) fails authentication (stored as \(backing))")
            }
        }
        return .success(check)
    }

    /// The plaintext and ring index of a sealed attribute value, trying every ring key.
    func openXattr(_ sealed: [UInt8], visibleName: String, account: String) -> (value: [UInt8], keyIndex: Int)? {
        for index in ring.allKeys.indices {
            guard let key = try? ring.accountKey(account, keyIndex: index) else { continue }
            if let value = try? XattrCodec.open(sealed: sealed, visibleName: visibleName, accountKey: key) {
                return (value, index)
            }
        }
        return nil
    }
}
