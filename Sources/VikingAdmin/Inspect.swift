import VikingCrypto
import VikingFormat
import VikingJSON
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// A backing file named on the command line, placed in its backing tree.
struct LocatedFile {
    let fullPath: String
    let tree: BackingTree?
    let path: RelativePath?

    var account: String? { path?.account }

    /// Resolves `file` and finds its backing root: `backing` when given, otherwise the nearest directory above
    /// the file that holds a key check (`backend_meta.json`).
    static func locate(_ file: String, backing: String?) throws(AdminError) -> LocatedFile {
        guard let resolved = realpath(file, nil) else {
            throw AdminError(errno == ENOENT ? .usage : .ioError, "\(file): \(SystemError(errno))")
        }
        let full = String(cString: resolved)
        free(resolved)
        var tree: BackingTree? = nil
        if let backing {
            tree = try BackingTree(path: backing)
        } else {
            var dir = full
            while let slash = dir.lastIndex(of: "/") {
                dir = String(dir[..<slash])
                let candidate = dir.isEmpty ? "/" : dir
                if access(candidate + (candidate == "/" ? "" : "/") + KeyCheck.fileName, F_OK) == 0 {
                    tree = try BackingTree(path: candidate)
                    break
                }
                if dir.isEmpty { break }
            }
        }
        guard let tree else { return LocatedFile(fullPath: full, tree: nil, path: nil) }
        let prefix = tree.root == "/" ? "/" : tree.root + "/"
        guard full.hasPrefix(prefix), full.count > prefix.count else {
            throw AdminError(.usage, "\(full) is not inside the backing directory \(tree.root)")
        }
        return LocatedFile(fullPath: full, tree: tree, path: RelativePath(String(full.dropFirst(prefix.count))))
    }
}

extension AdminCommands {
    static let inspectSpec = CommandSpec(
        name: "inspect",
        synopsis: "vikingfs inspect FILE... [--backing ROOT] [--key-file PATH] [--json]",
        summary: "Show what a backing file holds: format, version, account, root key ID, sizes, block count.",
        details: """
        The account comes from the file's path below the backing root: --backing ROOT, or the nearest directory
        above the file that holds backend_meta.json. With a key, the file is also authenticated completely.
        Exit 0 when every file could be inspected (and authenticates, with a key), otherwise the highest code
        any file got: 1 fails to authenticate, 2 not a regular file or unknown account, 4 cannot be read.
        """,
        options: [.value("backing", "ROOT", "the backing directory the files belong to"), .json],
        keys: .optional, positionals: 1...Int.max)

    static func inspect(_ inv: Invocation, console: any Console) throws(AdminError) -> ExitStatus {
        let ring = try Preconditions.keyRing(inv.keyOptions, required: false)
        var status = ExitStatus.ok
        var results: [JSON] = []
        for file in inv.positionals {
            let (fields, fileStatus) = try inspectOne(file, backing: inv.values["backing"], ring: ring)
            if fileStatus.rawValue > status.rawValue { status = fileStatus }
            if inv.json {
                results.append(.object(fields.map { JSON.Member($0.key, $0.json) }))
            } else {
                var text = "\(fields.first?.text ?? file)\n"
                for f in fields.dropFirst() { text += "  " + (f.label + ":").padding(16) + " " + f.text + "\n" }
                console.out(text)
            }
        }
        if inv.json {
            console.out(JSON.object([.init("command", .string("inspect")), .init("files", .array(results)),
                                     .init("exit", .int(status.rawValue))]).serialized() + "\n")
        }
        return status
    }

    private struct Field {
        let key: String
        let label: String
        let text: String
        let json: JSON
        init(_ key: String, _ label: String, _ text: String, _ json: JSON? = nil) {
            self.key = key
            self.label = label
            self.text = text
            self.json = json ?? .string(text)
        }
        static func number(_ key: String, _ label: String, _ value: Int64, unit: String = "") -> Field {
            Field(key, label, "\(value)\(unit)", .int(value))
        }
    }

    private static func inspectOne(_ file: String, backing: String?, ring: KeyRing?) throws(AdminError) -> ([Field], ExitStatus) {
        let located = try LocatedFile.locate(file, backing: backing)
        var fields = [Field("path", "path", located.path?.display ?? located.fullPath, .string(located.path?.string ?? located.fullPath))]
        fields.append(Field("backing_file", "backing file", located.fullPath))
        fields.append(Field("backing_root", "backing root", located.tree?.root ?? "unknown (no backend_meta.json above; use --backing)",
                            located.tree.map { .string($0.root) } ?? .null))
        let fd: Int32
        switch Posix.open(Array(located.fullPath.utf8CString), O_RDONLY | O_NONBLOCK) {
        case .failure(let e):
            fields.append(Field("error", "error", "opening: \(e)"))
            return (fields, .ioError)
        case .success(let f): fd = f
        }
        defer { close(fd) }
        guard case .success(let st) = Posix.fstat(fd), (st.st_mode & S_IFMT) == S_IFREG else {
            fields.append(Field("error", "error", "not a regular file"))
            return (fields, .usage)
        }
        let size = Int64(st.st_size)
        let kind: FileKind
        switch probeKind(fd, size: size) {
        case .failure(let e):
            fields.append(Field("error", "error", "reading: \(e)"))
            return (fields, .ioError)
        case .success(let k): kind = k
        }
        let account = located.account
        fields.append(Field("account", "account", account ?? "unknown", account.map { .string($0) } ?? .null))

        // Header facts need no key.
        switch kind {
        case .empty:
            fields.append(Field("format", "format", "empty (0 bytes: holds no secret, writable through the mount)", .string("empty")))
            fields.append(Field.number("plaintext_size", "plaintext size", 0, unit: " bytes"))
        case .legacy:
            fields.append(Field("format", "format", "legacy plaintext (read-only through the mount; vikingfs seal seals it)", .string("legacy")))
            fields.append(Field.number("plaintext_size", "plaintext size", size, unit: " bytes"))
        case .native:
            guard case .success(let bytes) = Posix.readPrefix(fd, count: NativeFormat.headerLength) else {
                fields.append(Field("error", "error", "reading the header failed"))
                return (fields, .ioError)
            }
            fields.append(Field("format", "format", "native", .string("native")))
            do {
                let header = try NativeHeader.parse(bytes)
                let layout = header.layout
                let body = max(0, size - Int64(NativeFormat.headerLength))
                fields.append(Field.number("version", "version", Int64(bytes[4])))
                fields.append(Field("root_key_id", "root key ID", Hex.encode(header.rootKeyID) + keyNote(header.rootKeyID, ring),
                                    .string(Hex.encode(header.rootKeyID))))
                fields.append(Field("file_id", "file ID", Hex.encode(header.fileID)))
                fields.append(Field.number("block_size", "block size", Int64(layout.blockSize), unit: " bytes"))
                fields.append(Field.number("blocks", "blocks", (body + Int64(layout.storedBlockSize) - 1) / Int64(layout.storedBlockSize)))
                fields.append(Field.number("plaintext_size", "plaintext size", layout.plaintextSize(forBacking: size), unit: " bytes"))
            } catch {
                fields.append(Field.number("version", "version", Int64(bytes.count > 4 ? bytes[4] : 0)))
                fields.append(Field("header_error", "header", "bad: \(error)"))
            }
        case .ove1:
            guard case .success(let bytes) = Posix.readPrefix(fd, count: OVE1.headerLength) else {
                fields.append(Field("error", "error", "reading the header failed"))
                return (fields, .ioError)
            }
            fields.append(Field("format", "format", "OVE1 (OpenViking envelope)", .string("ove1")))
            fields.append(Field.number("version", "version", Int64(bytes.count > 4 ? bytes[4] : 0)))
            let parsed: Result<OVE1.Header, FormatError> = bytes.withUnsafeBytes { b in
                Result { () throws(FormatError) in try OVE1.parseHeader(b) }
            }
            switch parsed {
            case .success(let header):
                let provider = ProviderKind(rawValue: header.provider).map(\.description) ?? "unknown (0x\(Hex.encode([header.provider])))"
                fields.append(Field("provider", "provider", provider))
                fields.append(Field("root_key_id", "root key ID", "not recorded by OVE1", .null))
                fields.append(Field.number("blocks", "blocks", 1, unit: " (one envelope)"))
                fields.append(Field.number("plaintext_size", "plaintext size", max(0, size - Int64(OVE1.overhead)), unit: " bytes"))
            case .failure(let error):
                fields.append(Field("header_error", "header", "bad: \(error)"))
            }
        }
        fields.append(Field.number("backing_size", "backing size", size, unit: " bytes"))

        guard let ring, kind == .native || kind == .ove1 else { return (fields, .ok) }
        guard let account, let tree = located.tree else {
            fields.append(Field("authenticates", "authenticates", "unknown: the account is unknown (use --backing)", .null))
            return (fields, .usage)
        }
        let authenticator = FileAuthenticator(ring: ring, accounts: tree.accounts())
        switch authenticator.authenticate(fd: fd, size: size, kind: kind, account: account) {
        case .failure(let e):
            fields.append(Field("error", "error", "reading: \(e)"))
            return (fields, .ioError)
        case .success(let report):
            var problems = report.problems
            if case .success(let x) = authenticator.checkXattrs(fd: fd, account: account) { problems += x.problems }
            if problems.isEmpty {
                let which = report.keyIndex.map { $0 == 0 ? " (with the given key)" : " (with an older key)" } ?? ""
                fields.append(Field("authenticates", "authenticates", "yes\(which)", .bool(true)))
                return (fields, .ok)
            }
            fields.append(Field("authenticates", "authenticates", "no: " + problems.joined(separator: "; "), .bool(false)))
            fields.append(Field("problems", "problems", problems.joined(separator: "; "), .array(problems.map { .string($0) })))
            return (fields, .damage)
        }
    }

    private static func keyNote(_ id: [UInt8], _ ring: KeyRing?) -> String {
        guard let ring else { return "" }
        switch ring.keyIndex(forKeyID: id) {
        case 0?: return " (the given key)"
        case .some: return " (an older given key)"
        case nil: return " (not a given key)"
        }
    }

    // MARK: decrypt

    static let decryptSpec = CommandSpec(
        name: "decrypt",
        synopsis: "vikingfs decrypt FILE [--backing ROOT] --key-file PATH",
        summary: "Print a backing file's plaintext on stdout (an operator's and tester's `cat` without a mount).",
        details: """
        The whole file is authenticated first; nothing is printed unless every block (or the whole OVE1
        envelope) authenticates. Legacy plaintext files are printed as they are. The account comes from the path
        below the backing root (--backing ROOT, or the nearest directory above holding backend_meta.json).
        Exit 1 when the file fails authentication.
        """,
        options: [.value("backing", "ROOT", "the backing directory the file belongs to")],
        keys: .required, positionals: 1...1)

    static func decrypt(_ inv: Invocation, console: any Console) throws(AdminError) -> ExitStatus {
        guard let ring = try Preconditions.keyRing(inv.keyOptions, required: true) else { return .usage }
        let located = try LocatedFile.locate(inv.positionals[0], backing: inv.values["backing"])
        guard let tree = located.tree, let account = located.account else {
            throw .usage("cannot tell the account of \(located.fullPath): no backend_meta.json above it; give --backing ROOT")
        }
        let fd: Int32
        switch Posix.open(Array(located.fullPath.utf8CString), O_RDONLY | O_NONBLOCK) {
        case .failure(let e): throw AdminError(.ioError, "\(located.fullPath): \(e)")
        case .success(let f): fd = f
        }
        defer { close(fd) }
        guard case .success(let st) = Posix.fstat(fd), (st.st_mode & S_IFMT) == S_IFREG else {
            throw .usage("\(located.fullPath) is not a regular file")
        }
        let size = Int64(st.st_size)
        let kind: FileKind
        switch probeKind(fd, size: size) {
        case .failure(let e): throw AdminError(.ioError, "\(located.fullPath): \(e)")
        case .success(let k): kind = k
        }
        if kind == .legacy {
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var offset: Int64 = 0
            while true {
                let n: Int
                switch buffer.withUnsafeMutableBytes({ Posix.pread(fd, $0, at: offset) }) {
                case .failure(let e): throw AdminError(.ioError, "\(located.fullPath): \(e)")
                case .success(let got): n = got
                }
                if n == 0 { break }
                guard buffer.withUnsafeBytes({ console.outBytes(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) else {
                    throw AdminError(.ioError, "writing to stdout: \(SystemError(errno))")
                }
                offset += Int64(n)
            }
            return .ok
        }
        let authenticator = FileAuthenticator(ring: ring, accounts: tree.accounts())
        // Pass 1 authenticates everything; pass 2 prints. Nothing unauthenticated ever reaches stdout.
        switch authenticator.authenticate(fd: fd, size: size, kind: kind, account: account) {
        case .failure(let e): throw AdminError(.ioError, "\(located.fullPath): \(e)")
        case .success(let report) where !report.authenticates:
            throw AdminError(.damage, "\(located.fullPath): " + report.problems.joined(separator: "; ") + "; nothing printed")
        case .success: break
        }
        var writeFailed = false
        let second = authenticator.authenticate(fd: fd, size: size, kind: kind, account: account) { piece in
            if !console.outBytes(piece) { writeFailed = true }
            return !writeFailed
        }
        if writeFailed { throw AdminError(.ioError, "writing to stdout: \(SystemError(errno))") }
        switch second {
        case .failure(let e): throw AdminError(.ioError, "\(located.fullPath): \(e)")
        case .success(let report) where !report.authenticates:
            throw AdminError(.damage, "\(located.fullPath) changed while it was printed: " + report.problems.joined(separator: "; "))
        case .success: return .ok
        }
    }
}
