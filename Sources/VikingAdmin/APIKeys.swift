import VikingAPIKeys
import VikingCrypto
import VikingFormat
import VikingJSON
import VikingKeys
#if canImport(Glibc)
import Glibc
#endif

/// Where a secret (an API key) comes from: never argv.
public enum SecretInput: Sendable {
    /// stdin when it is not a terminal (one trailing newline removed), otherwise a no-echo prompt on /dev/tty.
    case standardInput
    /// Fixed bytes, for tests.
    case bytes([UInt8])

    func read(prompt: String) throws(AdminError) -> [UInt8] {
        switch self {
        case .bytes(let b): return SecretInput.trimNewline(b)
        case .standardInput:
            if isatty(0) == 1 { return try SecretInput.promptWithoutEcho(prompt) }
            var out: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
                if n < 0 { if errno == EINTR { continue }; throw AdminError(.ioError, "reading stdin: \(SystemError(errno))") }
                if n == 0 { break }
                out += buffer[0..<n]
                guard out.count <= 1 << 20 else { throw AdminError(.usage, "stdin holds more than 1 MiB; that is not an API key") }
            }
            wipe(&buffer)
            return SecretInput.trimNewline(out)
        }
    }

    /// Removes one trailing "\n" or "\r\n" (what `echo` and a terminal add); everything else is the key.
    static func trimNewline(_ bytes: [UInt8]) -> [UInt8] {
        var b = bytes
        if b.last == 0x0a { b.removeLast(); if b.last == 0x0d { b.removeLast() } }
        return b
    }

    private static func promptWithoutEcho(_ prompt: String) throws(AdminError) -> [UInt8] {
        let fd = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw AdminError(.ioError, "opening /dev/tty for the prompt: \(SystemError(errno))") }
        defer { close(fd) }
        var saved = termios()
        let haveTerm = tcgetattr(fd, &saved) == 0
        if haveTerm {
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            quiet.c_lflag |= tcflag_t(ECHONL)
            _ = tcsetattr(fd, TCSAFLUSH, &quiet)
        }
        defer { if haveTerm { _ = tcsetattr(fd, TCSAFLUSH, &saved) } }
        _ = Posix.write(fd, Array(prompt.utf8))
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = Glibc.read(fd, &byte, 1)
            if n < 0 { if errno == EINTR { continue }; throw AdminError(.ioError, "reading the prompt: \(SystemError(errno))") }
            if n == 0 || byte == 0x0a { break }
            line.append(byte)
        }
        return trimNewline(line)
    }
}

/// Replacing plaintext API keys in one `users.json` with Argon2id hashes (DESIGN 6). Pure: bytes in, bytes out.
public enum UsersFileMigration {
    public enum Outcome: Equatable {
        /// Every key is already a hash (or there are no keys).
        case unchanged
        /// The new document and the IDs of the users whose keys were hashed.
        case migrated(document: [UInt8], users: [String])
        /// Not a users.json this command understands; left untouched.
        case malformed(String)
    }

    /// Hashes each `users.<id>.key` that is not already an `$argon2id$` string, sets `key_prefix` to the key's
    /// first 8 characters when absent, and keeps every other member, in order.
    public static func migrate(_ plaintext: [UInt8], hasher: ([UInt8]) throws -> String) -> Outcome {
        let document: JSON
        do { document = try JSON.parse(plaintext) } catch { return .malformed("not valid JSON: \(error)") }
        guard case .object(var top) = document else { return .malformed("the document is not a JSON object") }
        guard let usersIndex = top.lastIndex(where: { $0.key == "users" }) else { return .malformed("no \"users\" member") }
        guard case .object(var users) = top[usersIndex].value else { return .malformed("\"users\" is not an object") }
        var changed: [String] = []
        for i in users.indices {
            guard case .object(var fields) = users[i].value else {
                return .malformed("user \"\(users[i].key)\" is not an object")
            }
            guard let keyIndex = fields.lastIndex(where: { $0.key == "key" }), case .string(let key) = fields[keyIndex].value else {
                continue
            }
            if key.hasPrefix("$argon2id$") { continue }
            var keyBytes = Array(key.utf8)
            defer { wipe(&keyBytes) }
            let hash: String
            do { hash = try hasher(keyBytes) } catch {
                return .malformed("hashing the key of user \"\(users[i].key)\" failed: \(error)")
            }
            fields[keyIndex].value = .string(hash)
            if !fields.contains(where: { $0.key == "key_prefix" }) {
                fields.append(JSON.Member("key_prefix", .string(APIKeyHasher.keyPrefix(key))))
            }
            users[i].value = .object(fields)
            changed.append(users[i].key)
        }
        guard !changed.isEmpty else { return .unchanged }
        top[usersIndex].value = .object(users)
        return .migrated(document: Array(JSON.object(top).serialized().utf8), users: changed)
    }
}

extension AdminCommands {
    static let apikeyHashSpec = CommandSpec(
        name: "apikey hash",
        synopsis: "vikingfs apikey hash < keyfile",
        summary: "Hash an API key with Argon2id (OpenViking's parameters m=65536,t=3,p=2) and print the PHC string.",
        details: """
        The key is read from stdin (one trailing newline removed) or, on a terminal, from a prompt that does not
        echo. It is never taken from the command line.
        """,
        options: [], keys: .none, positionals: 0...0)

    static let apikeyVerifySpec = CommandSpec(
        name: "apikey verify",
        synopsis: "vikingfs apikey verify --hash PHC < keyfile",
        summary: "Check an API key (stdin or prompt) against an Argon2id PHC string.",
        details: "Exit 0 when the key matches, 1 when it does not, 2 when the hash is malformed or unsupported.",
        options: [.value("hash", "PHC", "the $argon2id$... string to check against (not a secret)"), .quiet],
        keys: .none, positionals: 0...0)

    static let apikeyMigrateSpec = CommandSpec(
        name: "apikey migrate",
        synopsis: "vikingfs apikey migrate BACKING --key-file PATH [--dry-run] [--force] [--json] [--quiet]",
        summary: "Replace plaintext API keys in every account's _system/users.json with Argon2id hashes.",
        details: """
        Each {account}/_system/users.json is decrypted, every plaintext "key" is replaced with its Argon2id hash
        and "key_prefix" is kept (set to the key's first 8 characters when absent); the file is re-sealed in its
        own format (native, OVE1, or left plaintext if it was) and replaced atomically. Keys that already hold an
        $argon2id$ hash stay, so running it again changes nothing. A users.json that does not parse is reported
        and left untouched. Nothing else is rewritten.
        """,
        options: [.dryRun, .force, .json, .quiet],
        keys: .required, positionals: 1...1)

    static func apikeyHash(_ inv: Invocation, console: any Console, input: SecretInput) throws(AdminError) -> ExitStatus {
        var key = try input.read(prompt: "API key: ")
        defer { wipe(&key) }
        guard !key.isEmpty else { throw .usage("the API key is empty") }
        do {
            console.out(try APIKeyHasher.hash(key) + "\n")
            return .ok
        } catch {
            throw AdminError(.ioError, "hashing failed: \(error)")
        }
    }

    static func apikeyVerify(_ inv: Invocation, console: any Console, input: SecretInput) throws(AdminError) -> ExitStatus {
        guard let phc = inv.values["hash"] else { throw .usage("missing --hash PHC (the stored $argon2id$... string)") }
        var key = try input.read(prompt: "API key: ")
        defer { wipe(&key) }
        do {
            let ok = try APIKeyHasher.verify(key, phc: phc)
            if !inv.quiet { console.out(ok ? "match\n" : "mismatch\n") }
            return ok ? .ok : .damage
        } catch {
            throw AdminError(.usage, "\(error)")
        }
    }

    static func apikeyMigrate(_ inv: Invocation, console: any Console) throws(AdminError) -> ExitStatus {
        let tree = try BackingTree(path: inv.positionals[0])
        let dryRun = inv.flag("dry-run")
        try Preconditions.checkNotMounted(tree, command: "apikey migrate", force: inv.flag("force"), console: console)
        let lock: TreeLock? = dryRun ? nil : try TreeLock(tree: tree, command: "apikey migrate")
        defer { withExtendedLifetime(lock) {} }
        guard let ring = try Preconditions.keyRing(inv.keyOptions, required: true) else { return .usage }
        _ = try Preconditions.verifyKeyCheck(tree, ring: ring)
        let progress = Progress(console: console, label: "apikey migrate", quiet: inv.quiet)

        var files: [RelativePath] = []
        guard let d = opendir(tree.root) else { throw AdminError(.ioError, "\(tree.root): \(SystemError(errno))") }
        while let entry = readdir(d) {
            let name = entryName(entry)
            if name == [UInt8(ascii: ".")] || name == [UInt8(ascii: "."), UInt8(ascii: ".")] { continue }
            let candidate = RelativePath(bytes: name).appending(Array("_system".utf8)).appending(Array("users.json".utf8))
            if case .success(let st) = Posix.lstat(tree.cPath(candidate)), (st.st_mode & S_IFMT) == S_IFREG { files.append(candidate) }
        }
        closedir(d)
        files.sort()

        var problems: [FileProblem] = []
        var results: [JSON] = []
        var migratedFiles = 0
        var hashedKeys = 0
        for path in files {
            let outcome = migrateUsersFile(path, tree: tree, ring: ring, dryRun: dryRun)
            switch outcome {
            case .failure(let p):
                problems.append(p)
                progress.problem("vikingfs apikey migrate: \(p); left untouched")
                results.append(.object([.init("path", .string(path.string)), .init("result", .string(p.kind == .io ? "failed" : "malformed")),
                                        .init("message", .string(p.message))]))
            case .success(let users):
                if !users.isEmpty { migratedFiles += 1; hashedKeys += users.count }
                let verb = users.isEmpty ? "unchanged" : (dryRun ? "would migrate" : "migrated")
                if !inv.json {
                    let who = users.isEmpty ? "every key already hashed" : "\(users.count) keys hashed (users: \(users.joined(separator: ", ")))"
                    console.out("\(verb): \(path.display): \(who)\n")
                }
                results.append(.object([.init("path", .string(path.string)), .init("result", .string(verb.replacingOccurrences(" ", "_"))),
                                        .init("users", .array(users.map { .string($0) }))]))
            }
            progress.advance(failed: { if case .failure = outcome { return true }; return false }())
        }
        if !dryRun && migratedFiles > 0 { _ = Posix.syncFilesystem(tree.cPath(RelativePath(bytes: []))) }
        progress.finish()
        let status = ExitStatus.worst(of: problems)
        if inv.json {
            console.out(JSON.object([
                .init("command", .string("apikey migrate")), .init("backing", .string(tree.root)), .init("dry_run", .bool(dryRun)),
                .init("files", .array(results)), .init("files_migrated", .int(migratedFiles)), .init("keys_hashed", .int(hashedKeys)),
                .init("exit", .int(status.rawValue)),
            ]).serialized() + "\n")
        } else {
            console.out("apikey migrate \(tree.root): \(files.count) users.json files, \(migratedFiles) \(dryRun ? "would be migrated" : "migrated") "
                        + "(\(hashedKeys) keys hashed), \(problems.count) left untouched because of problems\n")
        }
        return status
    }

    /// Migrates one users.json; returns the users whose keys were (or would be) hashed.
    private static func migrateUsersFile(_ path: RelativePath, tree: BackingTree, ring: KeyRing, dryRun: Bool) -> Result<[String], FileProblem> {
        let fd: Int32
        switch Posix.open(tree.cPath(path), O_RDONLY | O_NOFOLLOW | O_NONBLOCK) {
        case .failure(let e): return .failure(.io(path, "opening", e))
        case .success(let f): fd = f
        }
        defer { close(fd) }
        guard case .success(let st) = Posix.fstat(fd) else { return .failure(FileProblem(path, .io, "stat failed")) }
        var bytes: [UInt8]
        switch Posix.readToEnd(fd, sizeHint: Int(st.st_size)) {
        case .failure(let e): return .failure(.io(path, "reading", e))
        case .success(let b): bytes = b
        }
        let account = path.account
        let kind: FileKind
        var plaintext: [UInt8]
        do {
            (kind, plaintext) = try SealedFile.openWhole(bytes, account: account, keyRing: ring)
        } catch {
            return .failure(FileProblem(path, .damaged, "does not open: \(error)"))
        }
        defer { wipe(&plaintext); wipe(&bytes) }
        if kind == .empty { return .failure(FileProblem(path, .damaged, "empty file, not a users.json")) }
        switch UsersFileMigration.migrate(plaintext, hasher: { try APIKeyHasher.hash($0) }) {
        case .malformed(let why): return .failure(FileProblem(path, .damaged, why))
        case .unchanged: return .success([])
        case .migrated(var document, let users):
            defer { wipe(&document) }
            if dryRun { return .success(users) }
            let newBytes: [UInt8]
            do {
                switch kind {
                case .legacy: newBytes = document
                case .native:
                    let shift = (try? NativeHeader.parse(bytes).blockShift) ?? NativeFormat.defaultBlockShift
                    newBytes = try SealedFile.sealWhole(document, kind: .native, account: account, keyRing: ring, blockShift: shift)
                default:
                    newBytes = try SealedFile.sealWhole(document, kind: .ove1, account: account, keyRing: ring)
                }
            } catch {
                return .failure(FileProblem(path, .io, "re-sealing: \(error)"))
            }
            let replacement: FileReplacement
            switch FileReplacement.begin(tree: tree, replacing: path) {
            case .failure(let p): return .failure(p)
            case .success(let r): replacement = r
            }
            defer { replacement.abandon() }
            if case .failure(let p) = replacement.write(newBytes) { return .failure(p) }
            if case .failure(let p) = replacement.copyMetadata(from: fd, stat: st, transformXattr: { .success(($0, $1)) }) { return .failure(p) }
            if case .failure(let p) = replacement.commit(original: fd, stat: st) { return .failure(p) }
            return .success(users)
        }
    }
}

extension String {
    func replacingOccurrences(_ a: Character, _ b: Character) -> String { String(map { $0 == a ? b : $0 }) }
}
