import VikingCrypto
import VikingFormat
import VikingJSON
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// The rotation's write-ahead journal (`.vikingfs-tmp-rotation-journal` in the backing root, hidden by the mount).
///
/// Rotation rewrites each file's header in place (a single `pwrite` at offset 0) so contents, inode, hard links
/// and open handles stay as they are. A process kill cannot tear such a write, but a power loss on storage without
/// sector-atomic writes could leave a header mixing old and new bytes, which would lose the file key. Before a
/// batch of headers is written, the new headers are appended here and fdatasynced; a later run finds any header
/// that opens under neither key but still carries the same file ID (native) or data IV (OVE1) — fields a re-wrap
/// never changes — and writes the journaled header again. The journal holds only headers: wrapped keys, never
/// key material.
///
/// ```
/// "VKRJ" | version 0x01 | u32 count | count × (u32 path length | path | u16 header length | header) | SHA-256 of all before
/// ```
public enum RotationJournal {
    static let magic: [UInt8] = Array("VKRJ".utf8)

    public struct Record: Equatable, Sendable {
        public let path: RelativePath
        public let header: [UInt8]
        public init(path: RelativePath, header: [UInt8]) {
            self.path = path
            self.header = header
        }
    }

    public static func encode(_ records: [Record]) -> [UInt8] {
        var out = magic + [1]
        appendBE(&out, UInt32(records.count), bytes: 4)
        for r in records {
            appendBE(&out, UInt32(r.path.bytes.count), bytes: 4)
            out += r.path.bytes
            appendBE(&out, UInt32(r.header.count), bytes: 2)
            out += r.header
        }
        return out + SHA256.hash(out)
    }

    /// The records, or nil when the journal is torn or not a journal (its batch never reached any file).
    public static func decode(_ bytes: [UInt8]) -> [Record]? {
        guard bytes.count >= 9 + 32, bytes.starts(with: magic), bytes[4] == 1 else { return nil }
        let body = Array(bytes[..<(bytes.count - 32)])
        guard ConstantTime.equals(SHA256.hash(body), Array(bytes[(bytes.count - 32)...])) else { return nil }
        var at = 5
        func take(_ n: Int) -> [UInt8]? {
            guard at + n <= body.count else { return nil }
            defer { at += n }
            return Array(body[at..<(at + n)])
        }
        func number(_ n: Int) -> Int? { take(n).map { $0.reduce(0) { $0 << 8 | Int($1) } } }
        guard let count = number(4) else { return nil }
        var records: [Record] = []
        for _ in 0..<count {
            guard let pathLength = number(4), let path = take(pathLength), let headerLength = number(2),
                  let header = take(headerLength) else { return nil }
            records.append(Record(path: RelativePath(bytes: path), header: header))
        }
        return at == body.count ? records : nil
    }

    private static func appendBE(_ out: inout [UInt8], _ value: UInt32, bytes: Int) {
        for shift in stride(from: (bytes - 1) * 8, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    /// Bytes of a header that a re-wrap never changes: the native file ID, the OVE1 data IV.
    static func identity(ofHeader header: [UInt8]) -> [UInt8]? {
        if header.starts(with: NativeFormat.magic), header.count >= 28 { return Array(header[12..<28]) }
        if header.starts(with: OVE1.magic), header.count >= OVE1.headerLength { return Array(header[72..<84]) }
        return nil
    }
}

struct RotationCounts {
    var rotated = 0
    var alreadyNew = 0
    var legacy = 0
    var empty = 0
    var other = 0
    var xattrsResealed = 0
    var repaired = 0
    var staleRemoved = 0
    var problems: [FileProblem] = []
    /// Files that still open with an old key because their rotation failed for a reason that a rerun can fix.
    var stillUnderOldKey = 0
}

/// Re-wraps file keys under the new root key. Serial: the per-file work is a header read, two small AES-GCM
/// operations and a header write; the expensive part, durability, is batched (one journal fdatasync and one
/// syncfs per batch of headers).
final class Rotator {
    let tree: BackingTree
    /// Primary: the new key; previous: every key that may still open files.
    let ring: KeyRing
    let dryRun: Bool
    let authenticator: FileAuthenticator
    var counts = RotationCounts()
    var report: (FileProblem) -> Void = { _ in }

    private struct Pending {
        let path: RelativePath
        let oldHeader: [UInt8]
        let newHeader: [UInt8]
    }
    private var pending: [Pending] = []
    private var journalFD: Int32 = -1
    static let batchSize = 256

    init(tree: BackingTree, ring: KeyRing, dryRun: Bool) {
        self.tree = tree
        self.ring = ring
        self.dryRun = dryRun
        self.authenticator = FileAuthenticator(ring: ring, accounts: tree.accounts())
    }

    private var journalPath: [CChar] { tree.cPath(RelativePath(AdminTemporary.journalName)) }

    private func problem(_ p: FileProblem, blocksKeyCheck: Bool) {
        counts.problems.append(p)
        if blocksKeyCheck { counts.stillUnderOldKey += 1 }
        report(p)
    }

    // MARK: journal

    /// Repairs headers an interrupted earlier run may have torn, then removes its journal.
    func replayJournal() throws(AdminError) {
        let bytes: [UInt8]
        switch readAll(path: String(cString: journalPath)) {
        case .failure(let e) where e.code == ENOENT: return
        case .failure(let e): throw AdminError(.ioError, "reading the rotation journal: \(e)")
        case .success(let b): bytes = b
        }
        for record in RotationJournal.decode(bytes) ?? [] {
            guard let identity = RotationJournal.identity(ofHeader: record.header),
                  case .success(let fd) = Posix.open(tree.cPath(record.path), O_RDWR | O_NOFOLLOW | O_NONBLOCK) else { continue }
            defer { close(fd) }
            guard case .success(let current) = Posix.readPrefix(fd, count: record.header.count),
                  current.count == record.header.count, !headerOpens(current, account: record.path.account),
                  RotationJournal.identity(ofHeader: current) == identity else { continue }
            if case .failure(let e) = Posix.pwrite(fd, record.header, at: 0) {
                problem(.io(record.path, "repairing a torn header from the rotation journal", e), blocksKeyCheck: true)
                continue
            }
            _ = fsync(fd)
            counts.repaired += 1
        }
        unlink(journalPath)
    }

    private func headerOpens(_ header: [UInt8], account: String) -> Bool {
        if let native = try? NativeHeader.parse(header) {
            return (try? SealedFile.openNative(native, account: account, keyRing: ring)) != nil
        }
        let parsed: OVE1.Header? = header.withUnsafeBytes { try? OVE1.parseHeader($0) }
        guard let parsed else { return false }
        return (try? SealedFile.unwrapOVE1(parsed, account: account, keyRing: ring)) != nil
    }

    // MARK: files

    func rotate(_ entry: TreeEntry) {
        let path = entry.path
        let isDirectory = entry.kind == .directory
        let fd: Int32
        switch tree.open(entry) {
        case .success(nil): counts.other += 1; return
        case .failure(let e): problem(.io(path, "opening", e), blocksKeyCheck: true); return
        case .success(let f?): fd = f
        }
        defer { close(fd) }
        let account = entry.account
        rotateXattrs(fd: fd, path: path, account: account)
        if isDirectory { return }
        let st: stat
        switch Posix.fstat(fd) {
        case .failure(let e): problem(.io(path, "stat", e), blocksKeyCheck: true); return
        case .success(let s): st = s
        }
        let kind: FileKind
        switch probeKind(fd, size: Int64(st.st_size)) {
        case .failure(let e): problem(.io(path, "reading", e), blocksKeyCheck: true); return
        case .success(let k): kind = k
        }
        switch kind {
        case .empty: counts.empty += 1
        case .legacy: counts.legacy += 1
        case .native: rotateNative(fd: fd, path: path, account: account)
        case .ove1: rotateOVE1(fd: fd, path: path, account: account)
        }
        if pending.count >= Rotator.batchSize { flush() }
    }

    private func newAccountKey(_ account: String, path: RelativePath) -> SecureBytes? {
        do { return try ring.accountKey(account, keyIndex: 0) } catch {
            problem(FileProblem(path, .key, "deriving the new key of account '\(account)': \(error)"), blocksKeyCheck: true)
            return nil
        }
    }

    private func rotateNative(fd: Int32, path: RelativePath, account: String) {
        let bytes: [UInt8]
        switch Posix.readPrefix(fd, count: NativeFormat.headerLength) {
        case .failure(let e): problem(.io(path, "reading the header", e), blocksKeyCheck: true); return
        case .success(let b): bytes = b
        }
        let header: NativeHeader
        do { header = try NativeHeader.parse(bytes) } catch {
            problem(FileProblem(path, .damaged, "bad header: \(error); left as it is"), blocksKeyCheck: false)
            return
        }
        if ConstantTime.equals(header.rootKeyID, ring.primary.keyID) {
            counts.alreadyNew += 1
            return
        }
        let cipher: NativeFileCipher
        do { cipher = try SealedFile.openNative(header, account: account, keyRing: ring).cipher } catch .unknownRootKey(let id) {
            problem(FileProblem(path, .key, "sealed under root key \(id), which is neither the new key nor a given old key; left as it is"),
                    blocksKeyCheck: false)
            return
        } catch {
            problem(FileProblem(path, .damaged, authenticator.unwrapFailure(account: account, native: header, ove1: nil) + "; left as it is"),
                    blocksKeyCheck: false)
            return
        }
        guard let key = newAccountKey(account, path: path) else { return }
        do {
            let newHeader = try cipher.rewrapped(accountKey: key, account: account, rootKeyID: ring.primary.keyID)
            pending.append(Pending(path: path, oldHeader: bytes, newHeader: newHeader.serialized()))
        } catch {
            problem(FileProblem(path, .io, "re-wrapping the file key: \(error)"), blocksKeyCheck: true)
        }
    }

    private func rotateOVE1(fd: Int32, path: RelativePath, account: String) {
        let bytes: [UInt8]
        switch Posix.readPrefix(fd, count: OVE1.headerLength) {
        case .failure(let e): problem(.io(path, "reading the header", e), blocksKeyCheck: true); return
        case .success(let b): bytes = b
        }
        let parsed: Result<OVE1.Header, FormatError> = bytes.withUnsafeBytes { b in Result { () throws(FormatError) in try OVE1.parseHeader(b) } }
        guard case .success(let header) = parsed else {
            if case .failure(let e) = parsed { problem(FileProblem(path, .damaged, "bad header: \(e); left as it is"), blocksKeyCheck: false) }
            return
        }
        let fileKey: SecureBytes
        do {
            let (key, index) = try SealedFile.unwrapOVE1(header, account: account, keyRing: ring)
            if index == 0 { counts.alreadyNew += 1; return }
            fileKey = key
        } catch {
            problem(FileProblem(path, .damaged, authenticator.unwrapFailure(account: account, native: nil, ove1: header) + "; left as it is"),
                    blocksKeyCheck: false)
            return
        }
        guard let key = newAccountKey(account, path: path) else { return }
        do {
            let newHeader = try OVE1.rewrap(header, fileKey: fileKey, newAccountKey: key, provider: ring.providerKind.rawValue)
            pending.append(Pending(path: path, oldHeader: Array(bytes.prefix(header.length)), newHeader: OVE1.serialize(newHeader)))
        } catch {
            problem(FileProblem(path, .io, "re-wrapping the file key: \(error)"), blocksKeyCheck: true)
        }
    }

    /// Re-seals `user.vikingfs.*` values still under an old key. Each `fsetxattr` replaces a value atomically.
    /// Done before the header, and for every file (a rerun may find a file whose header moved but whose
    /// attributes did not).
    private func rotateXattrs(fd: Int32, path: RelativePath, account: String) {
        guard case .success(let names) = Posix.listXattrs(fd) else { return }
        for name in names where name.starts(with: XattrCodec.backingPrefixBytes) {
            let backing = String(decoding: name, as: UTF8.self)
            guard let visible = XattrCodec.visibleName(fromBacking: backing) else { continue }
            guard case .success(let sealed) = Posix.getXattr(fd, name) else { continue }
            guard let (value, index) = authenticator.openXattr(sealed, visibleName: visible, account: account) else {
                problem(FileProblem(path, .damaged, "extended attribute \(visible) opens under none of the given keys; left as it is"),
                        blocksKeyCheck: false)
                continue
            }
            var plain = value
            defer { wipe(&plain) }
            guard index != 0 else { continue }
            if dryRun { counts.xattrsResealed += 1; continue }
            guard let key = newAccountKey(account, path: path) else { return }
            do {
                let resealed = try XattrCodec.seal(value: plain, visibleName: visible, accountKey: key)
                if case .failure(let e) = Posix.setXattr(fd, name, resealed) {
                    problem(.io(path, "re-sealing extended attribute \(visible)", e), blocksKeyCheck: true)
                } else {
                    counts.xattrsResealed += 1
                }
            } catch {
                problem(FileProblem(path, .io, "re-sealing extended attribute \(visible): \(error)"), blocksKeyCheck: true)
            }
        }
    }

    /// Writes the pending headers: journal first (fdatasync), then each header in place, then one syncfs.
    func flush() {
        guard !pending.isEmpty else { return }
        defer { pending.removeAll(keepingCapacity: true) }
        if dryRun {
            counts.rotated += pending.count
            return
        }
        if journalFD < 0 {
            switch Posix.open(journalPath, O_RDWR | O_CREAT | O_NOFOLLOW, 0o600) {
            case .failure(let e):
                for p in pending { problem(.io(p.path, "opening the rotation journal", e), blocksKeyCheck: true) }
                return
            case .success(let fd): journalFD = fd
            }
        }
        let journal = RotationJournal.encode(pending.map { RotationJournal.Record(path: $0.path, header: $0.newHeader) })
        if case .failure(let e) = Posix.pwrite(journalFD, journal, at: 0) {
            for p in pending { problem(.io(p.path, "writing the rotation journal", e), blocksKeyCheck: true) }
            return
        }
        if ftruncate(journalFD, off_t(journal.count)) != 0 || fdatasync(journalFD) != 0 {
            let e = SystemError(errno)
            for p in pending { problem(.io(p.path, "syncing the rotation journal", e), blocksKeyCheck: true) }
            return
        }
        for p in pending {
            switch Posix.open(tree.cPath(p.path), O_RDWR | O_NOFOLLOW | O_NONBLOCK) {
            case .failure(let e):
                problem(.io(p.path, "opening for the header rewrite", e), blocksKeyCheck: e.code != ENOENT)
            case .success(let fd):
                // The file must still hold the header the new one was computed from (it may have been
                // rewritten or replaced meanwhile, with --force).
                if case .success(let current) = Posix.readPrefix(fd, count: p.oldHeader.count), current == p.oldHeader {
                    if case .failure(let e) = Posix.pwrite(fd, p.newHeader, at: 0) {
                        problem(.io(p.path, "writing the new header", e), blocksKeyCheck: true)
                    } else {
                        counts.rotated += 1
                    }
                } else {
                    problem(FileProblem(p.path, .io, "changed during the rotation; left as it is (run again)"), blocksKeyCheck: true)
                }
                close(fd)
            }
        }
        if case .failure(let e) = Posix.syncFilesystem(tree.cPath(RelativePath(bytes: []))) {
            problem(.io(RelativePath(bytes: []), "syncing the filesystem", e), blocksKeyCheck: true)
            return
        }
        _ = ftruncate(journalFD, 0)
    }

    /// Flushes the last batch and removes the journal.
    func finish() {
        flush()
        if journalFD >= 0 {
            close(journalFD)
            journalFD = -1
            unlink(journalPath)
        }
    }
}

extension AdminCommands {
    static let rotateSpec = CommandSpec(
        name: "rotate-root-key",
        synopsis: "vikingfs rotate-root-key BACKING --key-file OLD --new-key-file NEW [--dry-run] [--force] [--json] [--quiet]",
        summary: "Re-wrap every file key under a new root key, without re-encrypting file contents.",
        details: """
        Each sealed file's header is re-written in place with its file key wrapped under the new root key's
        account key; sealed extended attributes are re-sealed; the key check is re-written under the new key
        last. Interrupted, the tree stays readable with both keys (mount with root_key_file=NEW,
        old_root_key_file=OLD) and running the command again resumes: files already under the new key are
        skipped. Afterwards the old key opens nothing. Create the new key first (vikingfs init-key).
        Reports files rotated, skipped and failed.
        """,
        options: [.dryRun, .force, .json, .quiet],
        keys: .required, newKeys: true, positionals: 1...1)

    static func rotate(_ inv: Invocation, console: any Console) throws(AdminError) -> ExitStatus {
        let tree = try BackingTree(path: inv.positionals[0])
        let dryRun = inv.flag("dry-run")
        guard !inv.newKeyOptions.isEmpty else {
            throw .usage("no new key given: use --new-key-file PATH (or --new-provider, --new-config)")
        }
        try Preconditions.checkNotMounted(tree, command: "rotate-root-key", force: inv.flag("force"), console: console)
        let lock: TreeLock? = dryRun ? nil : try TreeLock(tree: tree, command: "rotate-root-key")
        defer { withExtendedLifetime(lock) {} }
        guard let old = try Preconditions.keyRing(inv.keyOptions, required: true) else { return .usage }
        let newKey: RootKey
        let newKind: ProviderKind
        do {
            let source = try KeySource.parse(inv.newKeyOptions)
            newKey = try source.provider.loadRootKey()
            newKind = source.provider.kind
        } catch {
            throw AdminError.key(error)
        }
        if ConstantTime.equals(newKey.keyID, old.primary.keyID) {
            throw .usage("the new key is the current key (key ID \(newKey.keyIDHex)); create a new one with vikingfs init-key")
        }
        let ring = KeyRing(primary: newKey, previous: old.allKeys.filter { !ConstantTime.equals($0.keyID, newKey.keyID) }, providerKind: newKind)

        var keyCheckNote = ""
        do {
            switch try KeyCheck.verify(backingRoot: tree.root, keyRing: ring) {
            case .valid(let i): keyCheckNote = i == 0 ? "already under the new key" : "under the old key"
            case .missing: keyCheckNote = "missing"
            case .unencrypted: keyCheckNote = "unencrypted"
            }
        } catch {
            switch error {
            case .wrongKey:
                throw AdminError(.keyError, "\(error): neither the current key (\(old.primary.keyIDHex)) nor the new key (\(newKey.keyIDHex)) opens it; nothing was changed")
            case .damaged: keyCheckNote = "damaged (it will be re-written)"
            case .io(_, let reason): throw AdminError(.ioError, "key check: \(reason)")
            }
        }

        let walker = TreeWalker(tree: tree)
        let total = Progress.drawsBar(console: console, quiet: inv.quiet) ? walker.countRegularFiles() : nil
        let progress = Progress(console: console, label: dryRun ? "rotate-root-key (dry run)" : "rotate-root-key", quiet: inv.quiet, total: total)
        let rotator = Rotator(tree: tree, ring: ring, dryRun: dryRun)
        rotator.report = { progress.problem("vikingfs rotate-root-key: \($0)") }
        if !dryRun { try rotator.replayJournal() }
        let force = inv.flag("force")
        walker.walk(visit: { entry in
            if entry.isKeyCheck { return true }
            if entry.isTemporary {
                if !dryRun && entry.isStaleTemporary(mountMayBeLive: force), unlink(tree.cPath(entry.path)) == 0 {
                    rotator.counts.staleRemoved += 1
                }
                return true
            }
            guard entry.kind == .regular || entry.kind == .directory else { rotator.counts.other += 1; return true }
            let before = rotator.counts.problems.count
            rotator.rotate(entry)
            if entry.kind == .regular { progress.advance(failed: rotator.counts.problems.count > before) }
            return true
        }, directoryFailed: { dir, error in
            rotator.counts.problems.append(.io(dir, "reading the directory", error))
            rotator.counts.stillUnderOldKey += 1
            progress.problem("vikingfs rotate-root-key: \(dir.display): reading the directory: \(error)")
        })
        rotator.finish()
        progress.finish()

        let c = rotator.counts
        var keyCheck: String
        if dryRun {
            keyCheck = "would be re-written under the new key"
        } else if c.stillUnderOldKey > 0 {
            keyCheck = "left \(keyCheckNote): \(c.stillUnderOldKey) files could not be rotated; fix them and run again"
        } else {
            do {
                try KeyCheck.write(backingRoot: tree.root, keyRing: ring)
                keyCheck = "re-written under the new key"
            } catch {
                keyCheck = "could not be re-written: \(error)"
                rotator.counts.problems.append(FileProblem(RelativePath(KeyCheck.fileName), .io, "re-writing the key check: \(error)"))
            }
        }
        let problems = rotator.counts.problems
        let status = ExitStatus.worst(of: problems)
        if inv.json {
            console.out(JSON.object([
                .init("command", .string("rotate-root-key")), .init("backing", .string(tree.root)), .init("dry_run", .bool(dryRun)),
                .init("old_key_id", .string(old.primary.keyIDHex)), .init("new_key_id", .string(newKey.keyIDHex)),
                .init(dryRun ? "would_rotate" : "rotated", .int(c.rotated)), .init("skipped_already_new", .int(c.alreadyNew)),
                .init("skipped_legacy", .int(c.legacy)), .init("skipped_empty", .int(c.empty)), .init("not_regular", .int(c.other)),
                .init("xattrs_resealed", .int(c.xattrsResealed)), .init("torn_headers_repaired", .int(c.repaired)),
                .init("stale_temporaries_removed", .int(c.staleRemoved)), .init("failed", .array(problems.map(\.json))),
                .init("key_check", .string(keyCheck)), .init("seconds", .number(secondsText(progress.elapsed))),
                .init("exit", .int(status.rawValue)),
            ]).serialized() + "\n")
        } else {
            var line = "rotate-root-key \(tree.root): \(old.primary.keyIDHex) -> \(newKey.keyIDHex): "
            line += "\(c.rotated) \(dryRun ? "would be rotated" : "rotated"), \(c.alreadyNew) skipped (already under the new key), "
            line += "\(c.legacy) legacy and \(c.empty) empty skipped, \(problems.count) failed"
            if c.xattrsResealed > 0 { line += ", \(c.xattrsResealed) extended attributes re-sealed" }
            if c.repaired > 0 { line += ", \(c.repaired) torn headers repaired from the journal" }
            line += "; key check \(keyCheck); \(formatSeconds(progress.elapsed))\n"
            console.out(line)
        }
        return status
    }
}
