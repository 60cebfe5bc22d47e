import VikingCrypto
import VikingFormat
import VikingJSON
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// What sealing one file did.
enum SealOutcome: Sendable {
    case sealed(bytes: Int64)
    case wouldSeal(bytes: Int64)
    /// Not legacy: native, OVE1 or empty; left as it is.
    case notLegacy(FileKind)
    /// A directory (only its extended attributes are sealed).
    case directory
    /// Gone or no longer a regular file by the time it was opened.
    case vanished
    case failed(FileProblem)
}

/// Seals legacy plaintext files in place, one at a time, safe to run from several threads.
final class Sealer: @unchecked Sendable {
    let tree: BackingTree
    let ring: KeyRing?
    let format: FileKind
    let dryRun: Bool
    let blockShift: UInt8 = NativeFormat.defaultBlockShift

    init(tree: BackingTree, ring: KeyRing?, format: FileKind, dryRun: Bool) {
        self.tree = tree
        self.ring = ring
        self.format = format
        self.dryRun = dryRun
    }

    /// What sealing one entry did, with the plaintext extended attributes it sealed.
    struct Report {
        var outcome: SealOutcome
        var xattrsSealed = 0
        var xattrProblems: [FileProblem] = []
    }

    func seal(_ entry: TreeEntry) -> Report {
        let path = entry.path
        let isDirectory = entry.kind == .directory
        let fd: Int32
        switch tree.open(entry) {
        case .success(nil): return Report(outcome: .vanished)
        case .failure(let e): return Report(outcome: .failed(.io(path, "opening", e)))
        case .success(let f?): fd = f
        }
        defer { close(fd) }
        let st: stat
        switch Posix.fstat(fd) {
        case .failure(let e): return Report(outcome: .failed(.io(path, "stat", e)))
        case .success(let s): st = s
        }
        let account = entry.account
        if isDirectory {
            let x = XattrsInPlace.seal(fd: fd, path: path, account: account, ring: ring, dryRun: dryRun)
            return Report(outcome: .directory, xattrsSealed: x.sealed, xattrProblems: x.problems)
        }
        let kind: FileKind
        switch probeKind(fd, size: Int64(st.st_size)) {
        case .failure(let e): return Report(outcome: .failed(.io(path, "reading", e)))
        case .success(let k): kind = k
        }
        guard kind == .legacy else {
            let x = XattrsInPlace.seal(fd: fd, path: path, account: account, ring: ring, dryRun: dryRun)
            return Report(outcome: .notLegacy(kind), xattrsSealed: x.sealed, xattrProblems: x.problems)
        }
        if dryRun {
            let plaintextXattrs = (try? Posix.listXattrs(fd).get())?.filter {
                $0.starts(with: XattrCodec.visiblePrefixBytes) && !$0.starts(with: XattrCodec.backingPrefixBytes)
            }.count ?? 0
            return Report(outcome: .wouldSeal(bytes: Int64(st.st_size)), xattrsSealed: plaintextXattrs)
        }
        guard let ring else { return Report(outcome: .failed(FileProblem(path, .key, "no key given"))) }
        let accountKey: SecureBytes
        do { accountKey = try ring.accountKey(account) } catch {
            return Report(outcome: .failed(FileProblem(path, .key, "deriving the key of account '\(account)': \(error)")))
        }

        let replacement: FileReplacement
        switch FileReplacement.begin(tree: tree, replacing: path) {
        case .failure(let p): return Report(outcome: .failed(p))
        case .success(let r): replacement = r
        }
        defer { replacement.abandon() }

        let written: Result<Int64, FileProblem> = format == .ove1
            ? writeOVE1(fd: fd, size: Int(st.st_size), accountKey: accountKey, ring: ring, path: path, to: replacement)
            : writeNative(fd: fd, size: Int(st.st_size), accountKey: accountKey, account: account, ring: ring, path: path, to: replacement)
        switch written {
        case .failure(let p): return Report(outcome: .failed(p))
        case .success(let n) where n != Int64(st.st_size):
            return Report(outcome: .failed(FileProblem(path, .io, "changed while it was being sealed (\(n) bytes read, \(st.st_size) expected); left as it was (run again)")))
        case .success: break
        }
        let xattrs = XattrSealing(path: path, accountKey: accountKey)
        if case .failure(let p) = replacement.copyMetadata(from: fd, stat: st, transformXattr: xattrs.seal) { return Report(outcome: .failed(p)) }
        if case .failure(let p) = replacement.keepTimes(st) { return Report(outcome: .failed(p)) }
        if case .failure(let p) = replacement.commit(original: fd, stat: st) { return Report(outcome: .failed(p)) }
        return Report(outcome: .sealed(bytes: Int64(st.st_size)), xattrsSealed: xattrs.count)
    }

    /// Streams the plaintext through a native cipher a megabyte at a time.
    private func writeNative(fd: Int32, size: Int, accountKey: SecureBytes, account: String, ring: KeyRing,
                             path: RelativePath, to replacement: FileReplacement) -> Result<Int64, FileProblem> {
        let cipher: NativeFileCipher
        do {
            cipher = try NativeFileCipher.create(accountKey: accountKey, account: account, rootKeyID: ring.primary.keyID,
                                                 blockShift: blockShift)
        } catch {
            return .failure(FileProblem(path, .io, "creating the file key: \(error)"))
        }
        if case .failure(let p) = replacement.write(cipher.header.serialized()) { return .failure(p) }
        let layout = cipher.layout
        let maxBlocks = max(1, FileAuthenticator.chunkBytes / layout.blockSize)
        // Size the buffers to the file when it is small; one extra block notices a file that grew.
        let blocks = min(maxBlocks, size / layout.blockSize + 1)
        var plain = [UInt8](repeating: 0, count: blocks * layout.blockSize)
        var sealed = [UInt8](repeating: 0, count: blocks * layout.storedBlockSize)
        var index: UInt64 = 0
        var total: Int64 = 0
        while true {
            let got: Int
            switch plain.withUnsafeMutableBytes({ Posix.read(fd, $0) }) {
            case .failure(let e): return .failure(.io(path, "reading", e))
            case .success(let n): got = n
            }
            if got == 0 { break }
            var at = 0
            var out = 0
            let result: Result<Void, FormatError> = plain.withUnsafeBytes { p in
                sealed.withUnsafeMutableBytes { s in
                    Result { () throws(FormatError) in
                        while at < got {
                            let n = min(layout.blockSize, got - at)
                            out += try cipher.sealBlock(index: index, plaintext: UnsafeRawBufferPointer(rebasing: p[at..<(at + n)]),
                                                        output: UnsafeMutableRawBufferPointer(rebasing: s[out..<(out + n + NativeFormat.blockOverhead)]))
                            at += n
                            index += 1
                        }
                    }
                }
            }
            if case .failure(let e) = result { return .failure(FileProblem(path, .io, "sealing: \(e)")) }
            if case .failure(let p) = sealed.withUnsafeBytes({ replacement.write(UnsafeRawBufferPointer(rebasing: $0[0..<out])) }) {
                return .failure(p)
            }
            total += Int64(got)
            if got < plain.count { break }
        }
        return .success(total)
    }

    /// OVE1 is one GCM message: the file is read whole (as OpenViking does).
    private func writeOVE1(fd: Int32, size: Int, accountKey: SecureBytes, ring: KeyRing, path: RelativePath,
                           to replacement: FileReplacement) -> Result<Int64, FileProblem> {
        let plaintext: [UInt8]
        switch Posix.readToEnd(fd, sizeHint: size) {
        case .failure(let e): return .failure(.io(path, "reading", e))
        case .success(let b): plaintext = b
        }
        let envelope: [UInt8]
        do { envelope = try OVE1.seal(plaintext, accountKey: accountKey, provider: ring.providerKind.rawValue) } catch {
            return .failure(FileProblem(path, .io, "sealing: \(error)"))
        }
        if case .failure(let p) = replacement.write(envelope) { return .failure(p) }
        return .success(Int64(plaintext.count))
    }
}

/// How sealing treats a legacy file's extended attributes: plaintext `user.NAME` values are sealed under the
/// account key as the mount stores them (`user.vikingfs.NAME`, see `XattrCodec`); attributes already sealed
/// (`user.vikingfs.*`) and other namespaces (ACLs, security labels) are kept as they are.
final class XattrSealing {
    let path: RelativePath
    let accountKey: SecureBytes
    /// Attributes sealed so far.
    private(set) var count = 0

    init(path: RelativePath, accountKey: SecureBytes) {
        self.path = path
        self.accountKey = accountKey
    }

    func seal(name: [UInt8], value: [UInt8]) -> Result<([UInt8], [UInt8]), FileProblem> {
        guard name.starts(with: XattrCodec.visiblePrefixBytes), !name.starts(with: XattrCodec.backingPrefixBytes) else {
            return .success((name, value))
        }
        let visible = String(decoding: name, as: UTF8.self)
        guard Array(visible.utf8) == name, let backing = XattrCodec.backingName(for: visible) else {
            return .failure(FileProblem(path, .io, "extended attribute \(escapeForDisplay(name)) has a name that is not UTF-8; it cannot be sealed"))
        }
        do {
            let sealed = try XattrCodec.seal(value: value, visibleName: visible, accountKey: accountKey)
            count += 1
            return .success((Array(backing.utf8), sealed))
        } catch {
            return .failure(FileProblem(path, .io, "sealing extended attribute \(visible): \(error)"))
        }
    }
}

struct SealCounts {
    var sealed = 0
    var sealedBytes: Int64 = 0
    var wouldSeal: [RelativePath] = []
    var wouldSealBytes: Int64 = 0
    var native = 0
    var ove1 = 0
    var empty = 0
    var other = 0
    var staleRemoved = 0
    var xattrsSealed = 0
    var problems: [FileProblem] = []
}

extension AdminCommands {
    static let sealSpec = CommandSpec(
        name: "seal",
        synopsis: "vikingfs seal BACKING --key-file PATH [--format native|ove1] [--dry-run] [--force] [--jobs N] [--json] [--quiet]",
        summary: "Seal every legacy plaintext file of a backing directory in place, under its account's key.",
        details: """
        Each legacy file is sealed to a hidden temporary file in its own directory, fsynced and renamed over the
        original, keeping owner, mode, timestamps and extended attributes (user.* values are sealed as the mount
        stores them). Interrupted at any point, every file is the old plaintext or the new sealed file; running the
        command again finishes the job and removes leftover temporary files. Sealed and empty files are left as
        they are. The key check (backend_meta.json) is created when missing in a tree that holds no sealed file;
        otherwise it must open with the given key. Refuses a backing directory a vikingfs mount is serving.
        """,
        options: [.value("format", "native|ove1", "format of the sealed files (default native)"), .dryRun, .force, .jobs, .json, .quiet],
        keys: .required, positionals: 1...1)

    static func seal(_ inv: Invocation, console: any Console) throws(AdminError) -> ExitStatus {
        let tree = try BackingTree(path: inv.positionals[0])
        let dryRun = inv.flag("dry-run")
        let format: FileKind
        switch inv.values["format"] ?? "native" {
        case "native": format = .native
        case "ove1": format = .ove1
        case let other: throw .usage("--format must be native or ove1, not '\(other)'")
        }
        let jobs = dryRun ? 1 : try inv.jobs()
        try Preconditions.checkNotMounted(tree, command: "seal", force: inv.flag("force"), console: console)
        let lock: TreeLock? = dryRun ? nil : try TreeLock(tree: tree, command: "seal")
        defer { withExtendedLifetime(lock) {} }
        let ring = try Preconditions.keyRing(inv.keyOptions, required: !dryRun)

        var keyCheck = "not checked"
        if let ring {
            switch try Preconditions.verifyKeyCheck(tree, ring: ring) {
            case .valid(let index):
                keyCheck = index == 0 ? "valid" : "valid under an older key (rotation in progress)"
            case .missing, .unencrypted:
                if KeyCheck.treeHoldsSealedFile(root: tree.root) {
                    throw AdminError(.keyError, """
                        \(tree.root)/\(KeyCheck.fileName) is missing (or unencrypted) but the tree already holds sealed files:
                        there is no way to prove that the given key is the one they were sealed with, so nothing was sealed.
                        Check a sealed file with `vikingfs inspect FILE --key-file ...` and restore the key check from a backup.
                        """)
                }
                if dryRun {
                    keyCheck = "would be created"
                } else {
                    do { try KeyCheck.write(backingRoot: tree.root, keyRing: ring) } catch {
                        throw AdminError(.ioError, "creating the key check: \(error)")
                    }
                    keyCheck = "created"
                }
            }
        }

        let walker = TreeWalker(tree: tree)
        let total = Progress.drawsBar(console: console, quiet: inv.quiet) ? walker.countRegularFiles() : nil
        let progress = Progress(console: console, label: dryRun ? "seal (dry run)" : "seal", quiet: inv.quiet, total: total)
        let sealer = Sealer(tree: tree, ring: ring, format: format, dryRun: dryRun)
        let counts = Tally(SealCounts())
        let json = inv.json

        withWorkers(jobs: jobs, work: { (entry: TreeEntry) in
            let result = sealer.seal(entry)
            let path = entry.path
            var failed = !result.xattrProblems.isEmpty
            counts.update { c in
                c.xattrsSealed += result.xattrsSealed
                c.problems += result.xattrProblems
                switch result.outcome {
                case .sealed(let n): c.sealed += 1; c.sealedBytes += n
                case .wouldSeal(let n):
                    c.wouldSeal.append(path)
                    c.wouldSealBytes += n
                case .notLegacy(.native): c.native += 1
                case .notLegacy(.ove1): c.ove1 += 1
                case .notLegacy: c.empty += 1
                case .directory: break
                case .vanished: c.other += 1
                case .failed(let p): c.problems.append(p); failed = true
                }
            }
            if case .wouldSeal(let n) = result.outcome, !json { console.out("would seal: \(path.display) (\(n) bytes)\n") }
            if case .failed(let p) = result.outcome { progress.problem("vikingfs seal: \(p)") }
            for p in result.xattrProblems { progress.problem("vikingfs seal: \(p)") }
            if entry.kind != .directory { progress.advance(failed: failed) }
        }, produce: { push in
            walker.walk(visit: { entry in
                if entry.isKeyCheck { return true }
                if entry.isTemporary {
                    if !dryRun && entry.isStaleTemporary(mountMayBeLive: inv.flag("force")) {
                        if unlink(tree.cPath(entry.path)) == 0 { counts.update { $0.staleRemoved += 1 } }
                    }
                    return true
                }
                guard entry.kind == .regular || entry.kind == .directory else {
                    counts.update { $0.other += 1 }
                    return true
                }
                push(entry)
                return true
            }, directoryFailed: { dir, error in
                let p = FileProblem.io(dir, "reading the directory", error)
                counts.update { $0.problems.append(p) }
                progress.problem("vikingfs seal: \(p)")
            })
        })
        if !dryRun, counts.value.sealed > 0, case .failure(let e) = Posix.syncFilesystem(tree.cPath(RelativePath(bytes: []))) {
            counts.update { $0.problems.append(.io(RelativePath(bytes: []), "syncing the filesystem", e)) }
        }
        progress.finish()

        let c = counts.value
        let status = ExitStatus.worst(of: c.problems)
        if json {
            var members: [JSON.Member] = [
                .init("command", .string("seal")), .init("backing", .string(tree.root)),
                .init("format", .string(format == .ove1 ? "ove1" : "native")), .init("dry_run", .bool(dryRun)),
                .init("key_check", .string(keyCheck)),
            ]
            if dryRun {
                members.append(.init("would_seal", .array(c.wouldSeal.map { .string($0.string) })))
                members.append(.init("would_seal_bytes", .int(c.wouldSealBytes)))
            } else {
                members.append(.init("sealed", .int(c.sealed)))
                members.append(.init("sealed_bytes", .int(c.sealedBytes)))
            }
            members += [
                .init("already_native", .int(c.native)), .init("already_ove1", .int(c.ove1)), .init("empty", .int(c.empty)),
                .init("not_regular", .int(c.other)), .init("stale_temporaries_removed", .int(c.staleRemoved)),
                .init(dryRun ? "would_seal_xattrs" : "xattrs_sealed", .int(c.xattrsSealed)),
                .init("failed", .array(c.problems.map(\.json))), .init("seconds", .number(secondsText(progress.elapsed))),
                .init("exit", .int(status.rawValue)),
            ]
            console.out(JSON.object(members).serialized() + "\n")
        } else {
            let head = dryRun ? "\(c.wouldSeal.count) would be sealed (\(c.wouldSealBytes) bytes)" : "\(c.sealed) sealed (\(c.sealedBytes) bytes, \(format == .ove1 ? "OVE1" : "native"))"
            console.out("seal \(tree.root): \(head), \(c.native) already native, \(c.ove1) already OVE1, \(c.empty) empty, "
                        + "\(c.other) not regular files, \(c.xattrsSealed) extended attributes \(dryRun ? "would be " : "")sealed, "
                        + "\(c.staleRemoved) stale temporary files removed, \(c.problems.count) failed; "
                        + "key check \(keyCheck); \(formatSeconds(progress.elapsed))\n")
        }
        return status
    }
}

func secondsText(_ s: Double) -> String { String(Double(Int(s * 1000)) / 1000) }
