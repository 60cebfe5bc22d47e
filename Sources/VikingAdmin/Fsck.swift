import VikingFormat
import VikingJSON
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

struct FsckCounts {
    var native = 0
    var ove1 = 0
    var legacy = 0
    var empty = 0
    var other = 0
    var temporaries = 0
    /// Sealed files opened by a ring key other than the primary (a rotation still in progress).
    var underOlderKey = 0
    /// Files and directories holding plaintext `user.*` extended attributes.
    var plaintextXattrs = 0
    var bytes: Int64 = 0
    var problems: [FileProblem] = []
}

/// Checks one entry completely; thread-safe.
struct FileChecker: Sendable {
    let tree: BackingTree
    let authenticator: FileAuthenticator
    /// Report legacy plaintext files as damage (a tree that has been sealed; the mount's `no_legacy`).
    var noLegacy = false

    struct Report {
        /// nil for a directory.
        var kind: FileKind?
        var keyIndex: Int? = nil
        var plaintextBytes: Int64 = 0
        var plaintextXattrs = 0
        var problems: [FileProblem] = []
    }

    /// nil when the entry vanished or is no longer what the walk saw.
    func check(_ entry: TreeEntry) -> Report? {
        let path = entry.path
        let isDirectory = entry.kind == .directory
        var report = Report(kind: nil)
        let fd: Int32
        switch tree.open(entry) {
        case .success(nil): return nil
        case .failure(let e): report.problems.append(.io(path, "opening", e)); return report
        case .success(let f?): fd = f
        }
        defer { close(fd) }
        let account = entry.account
        if !isDirectory {
            let st: stat
            switch Posix.fstat(fd) {
            case .failure(let e): report.problems.append(.io(path, "stat", e)); return report
            case .success(let s): st = s
            }
            let size = Int64(st.st_size)
            switch probeKind(fd, size: size) {
            case .failure(let e): report.problems.append(.io(path, "reading", e)); return report
            case .success(let k): report.kind = k
            }
            if noLegacy && report.kind == .legacy {
                report.problems.append(FileProblem(path, .damaged, "legacy plaintext in a sealed tree: unauthenticated (planted, or a sealed file whose first bytes were damaged)"))
            }
            switch authenticator.authenticate(fd: fd, size: size, kind: report.kind ?? .legacy, account: account) {
            case .failure(let e): report.problems.append(.io(path, "reading", e))
            case .success(let auth):
                report.keyIndex = auth.keyIndex
                report.plaintextBytes = auth.plaintextSize
                report.problems += auth.problems.map { FileProblem(path, auth.unknownKey ? .key : .damaged, $0) }
            }
        }
        switch authenticator.checkXattrs(fd: fd, account: account) {
        case .failure(let e): report.problems.append(.io(path, "reading extended attributes", e))
        case .success(let x):
            report.plaintextXattrs = x.plaintext
            report.problems += x.problems.map { FileProblem(path, .damaged, $0) }
        }
        return report
    }
}

extension AdminCommands {
    static let fsckSpec = CommandSpec(
        name: "fsck",
        synopsis: "vikingfs fsck BACKING --key-file PATH [--no-legacy] [--jobs N] [--json] [--quiet]",
        summary: "Verify a backing directory: authenticate every sealed file completely. Read-only.",
        details: """
        Every native file is authenticated block by block and every OVE1 envelope as a whole, with its sealed
        extended attributes; legacy plaintext, empty files and leftover temporary files are counted. Each damaged
        file is reported with its path and what is wrong: a bad header, which blocks fail, a file key sealed for
        another account (a file moved between accounts), a truncated file, a root key that was not given.
        The key check (backend_meta.json) must open with the given key (exit 3 otherwise).
        Exit 0 when every sealed file authenticates, 1 when damage is found, 4 when files could not be read.
        """,
        options: [.flag("no-legacy", "report legacy plaintext files as damage (for sealed trees; the mount's no_legacy)"),
                  .jobs, .json, .quiet],
        keys: .required, positionals: 1...1)

    static func fsck(_ inv: Invocation, console: any Console) throws(AdminError) -> ExitStatus {
        let tree = try BackingTree(path: inv.positionals[0])
        let jobs = try inv.jobs()
        guard let ring = try Preconditions.keyRing(inv.keyOptions, required: true) else { return .usage }
        if let mount = MountTable.mounts(serving: tree.root).first {
            console.err("vikingfs fsck: note: \(tree.root) is served by the vikingfs mount at \(mount.mountPoint); files written meanwhile may show as damaged\n")
        }
        var keyCheckProblem: FileProblem? = nil
        var keyCheckText: String
        let keyCheckPath = RelativePath(KeyCheck.fileName)
        let keyCheckStatus: KeyCheck.Status?
        do {
            keyCheckStatus = try KeyCheck.verify(backingRoot: tree.root, keyRing: ring)
        } catch {
            switch error {
            case .wrongKey:
                throw AdminError(.keyError, "\(error) (given key ID \(ring.primary.keyIDHex)); nothing was checked")
            case .damaged(_, let reason):
                keyCheckProblem = FileProblem(keyCheckPath, .damaged, "key check damaged: \(reason)")
            case .io(_, let reason):
                keyCheckProblem = FileProblem(keyCheckPath, .io, "key check: \(reason)")
            }
            keyCheckStatus = nil
        }
        switch keyCheckStatus {
        case .valid(let i)?: keyCheckText = i == 0 ? "valid" : "valid under an older key (rotation not finished)"
        case .missing?: keyCheckText = "missing"
        case .unencrypted?: keyCheckText = "unencrypted (empty plaintext)"
        case nil: keyCheckText = "damaged"
        }

        let walker = TreeWalker(tree: tree)
        let total = Progress.drawsBar(console: console, quiet: inv.quiet) ? walker.countRegularFiles() : nil
        let progress = Progress(console: console, label: "fsck", quiet: inv.quiet, total: total)
        let checker = FileChecker(tree: tree, authenticator: FileAuthenticator(ring: ring, accounts: tree.accounts()),
                                  noLegacy: inv.flag("no-legacy"))
        let counts = Tally(FsckCounts())
        if let keyCheckProblem {
            counts.update { $0.problems.append(keyCheckProblem) }
            progress.problem("vikingfs fsck: \(keyCheckProblem)")
        }

        withWorkers(jobs: jobs, work: { (entry: TreeEntry) in
            let report = checker.check(entry)
            counts.update { c in
                guard let report else { c.other += 1; return }
                switch report.kind {
                case .native?: c.native += 1
                case .ove1?: c.ove1 += 1
                case .legacy?: c.legacy += 1
                case .empty?: c.empty += 1
                case nil: break
                }
                if let k = report.keyIndex, k > 0 { c.underOlderKey += 1 }
                if report.plaintextXattrs > 0 { c.plaintextXattrs += 1 }
                c.bytes += report.plaintextBytes
                c.problems += report.problems
            }
            for p in report?.problems ?? [] { progress.problem("vikingfs fsck: \(p.kind == .io ? "unreadable" : "DAMAGED") \(p)") }
            if entry.kind != .directory { progress.advance(failed: !(report?.problems.isEmpty ?? true)) }
        }, produce: { push in
            walker.walk(visit: { entry in
                if entry.isKeyCheck { return true }
                if entry.isTemporary { counts.update { $0.temporaries += 1 }; return true }
                guard entry.kind == .regular || entry.kind == .directory else { counts.update { $0.other += 1 }; return true }
                push(entry)
                return true
            }, directoryFailed: { dir, error in
                let p = FileProblem.io(dir, "reading the directory", error)
                counts.update { $0.problems.append(p) }
                progress.problem("vikingfs fsck: unreadable \(p)")
            })
        })
        progress.finish()

        var c = counts.value
        let sealed = c.native + c.ove1
        if sealed > 0, keyCheckStatus == .missing || keyCheckStatus == .unencrypted {
            let p = FileProblem(keyCheckPath, .damaged, "the key check is \(keyCheckText) although the tree holds \(sealed) sealed files")
            c.problems.append(p)
            console.err("vikingfs fsck: DAMAGED \(p)\n")
        }
        let status = ExitStatus.worst(of: c.problems)
        let damagedFiles = Set(c.problems.map(\.path)).count
        if inv.json {
            console.out(JSON.object([
                .init("command", .string("fsck")), .init("backing", .string(tree.root)),
                .init("key_check", .string(keyCheckText)), .init("key_id", .string(ring.primary.keyIDHex)),
                .init("native", .int(c.native)), .init("ove1", .int(c.ove1)), .init("legacy", .int(c.legacy)),
                .init("empty", .int(c.empty)), .init("not_regular", .int(c.other)), .init("temporary_files", .int(c.temporaries)),
                .init("under_older_key", .int(c.underOlderKey)), .init("with_plaintext_xattrs", .int(c.plaintextXattrs)), .init("plaintext_bytes", .int(c.bytes)),
                .init("damaged_files", .int(damagedFiles)), .init("problems", .array(c.problems.map(\.json))),
                .init("seconds", .number(secondsText(progress.elapsed))), .init("exit", .int(status.rawValue)),
            ]).serialized() + "\n")
        } else {
            var line = "fsck \(tree.root): \(c.native) native, \(c.ove1) OVE1, \(c.legacy) legacy plaintext, \(c.empty) empty, "
            line += "\(c.other) not regular files, \(c.temporaries) temporary files; key check \(keyCheckText); "
            if c.underOlderKey > 0 { line += "\(c.underOlderKey) files still under an older key; " }
            if c.plaintextXattrs > 0 { line += "\(c.plaintextXattrs) files or directories with plaintext user.* extended attributes (vikingfs seal seals them); " }
            line += status == .ok ? "clean" : "\(damagedFiles) files with problems (\(c.problems.count) problems)"
            line += "; \(formatSeconds(progress.elapsed))\n"
            console.out(line)
        }
        return status
    }
}
