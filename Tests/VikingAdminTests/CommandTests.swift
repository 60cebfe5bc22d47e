import CSystem
import Foundation
import Testing
@testable import VikingAdmin
import VikingAPIKeys
import VikingCrypto
import VikingFormat
import VikingJSON
import VikingKeys

/// A scratch directory on tmpfs, removed when the test ends.
final class Scratch {
    let path: String

    init() {
        var template = Array("/dev/shm/vikingadmin-test.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = made.map { String(cString: $0) } ?? "/tmp/vikingadmin-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func write(_ relative: String, _ bytes: [UInt8], mode: Int = 0o644) {
        let full = path + "/" + relative
        try? FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: full, contents: Data(bytes), attributes: [.posixPermissions: mode])
    }

    func read(_ relative: String) -> [UInt8] {
        (try? readAll(path: path + "/" + relative).get()) ?? []
    }

    func key(_ name: String) -> String {
        let file = path + "/" + name
        _ = try? KeyFileProvider(path: file).createRootKey()
        return file
    }
}

/// Runs the admin command in-process.
func admin(_ arguments: [String], input: SecretInput = .bytes([])) -> (status: Int32, out: String, err: String, bytes: [UInt8]) {
    let console = CapturedConsole()
    let status = Admin.run(arguments, console: console, input: input)
    return (status, console.stdout, console.stderr, console.stdoutData)
}

@Suite(.serialized) struct SealFsckRotateTests {
    /// A small legacy tree: files in several accounts, a big one, an empty one, odd names.
    func legacyTree(_ s: Scratch) -> [String: [UInt8]] {
        var files: [String: [UInt8]] = [
            "acme/docs/a.md": Array("hello acme\n".utf8),
            "acme/docs/big.bin": (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) },
            "globex/sp ace/ünï/fi le": Array("globex\n".utf8),
            "rootfile": Array("in the root\n".utf8),
            "_system/accounts.json": Array(#"{"accounts": {}}"#.utf8),
            "acme/new\nline": Array("newline name\n".utf8),
            "deep/a/b/c/d/e/f/g/h/i/j/z": Array("deep\n".utf8),
        ]
        files["acme/empty"] = []
        for (path, bytes) in files { s.write("b/" + path, bytes) }
        return files
    }

    @Test func sealsVerifiesAndKeepsMetadata() throws {
        let s = Scratch()
        let key = s.key("k")
        let files = legacyTree(s)
        let a = s.path + "/b/acme/docs/a.md"
        chmod(a, 0o640)
        var times = [timespec(tv_sec: 1_600_000_000, tv_nsec: 123_000_000), timespec(tv_sec: 1_600_000_001, tv_nsec: 456_000_000)]
        utimensat(AT_FDCWD, a, &times, 0)
        let fd = open(a, O_RDONLY)
        _ = fsetxattr(fd, "user.color", "red", 3, 0)
        close(fd)

        let dry = admin(["seal", s.path + "/b", "--key-file", key, "--dry-run", "--json"])
        #expect(dry.status == 0)
        let dryJSON = try JSON.parse(Array(dry.out.utf8))
        guard case .array(let would)? = dryJSON["would_seal"] else { Issue.record("no list"); return }
        #expect(would.count == files.count - 1)
        #expect(s.read("b/acme/docs/a.md") == files["acme/docs/a.md"])

        let sealed = admin(["seal", s.path + "/b", "--key-file", key, "--quiet", "--jobs", "3"])
        #expect(sealed.status == 0, "\(sealed.err)")
        #expect(sealed.out.contains("\(files.count - 1) sealed"))
        #expect(sealed.out.contains("key check created"))
        for (path, plaintext) in files where !plaintext.isEmpty {
            #expect(s.read("b/" + path).starts(with: NativeFormat.magic), "\(path) not sealed")
            let shown = admin(["decrypt", s.path + "/b/" + path, "--key-file", key])
            #expect(shown.status == 0)
            #expect(shown.bytes == plaintext, "\(path) decrypts differently")
        }
        var st = stat()
        stat(a, &st)
        #expect(st.st_mode & 0o777 == 0o640)
        #expect(st.st_mtim.tv_sec == 1_600_000_001 && st.st_mtim.tv_nsec == 456_000_000)
        let fd2 = open(a, O_RDONLY)
        defer { close(fd2) }
        #expect(throws: SystemError.self) { try Posix.getXattr(fd2, Array("user.color".utf8)).get() }
        let sealedValue = try Posix.getXattr(fd2, Array("user.vikingfs.color".utf8)).get()
        let ring = try KeySource.parse(["root_key_file": key]).loadKeyRing()
        #expect(try XattrCodec.open(sealed: sealedValue, visibleName: "user.color", accountKey: ring.accountKey("acme")) == Array("red".utf8))

        let fsck = admin(["fsck", s.path + "/b", "--key-file", key, "--json"])
        #expect(fsck.status == 0, "\(fsck.err)")
        let report = try JSON.parse(Array(fsck.out.utf8))
        #expect(report["native"] == .int(files.count - 1))
        #expect(report["empty"] == .int(1))
        #expect(report["key_check"]?.stringValue == "valid")

        let again = admin(["seal", s.path + "/b", "--key-file", key, "--json"])
        #expect(again.status == 0)
        #expect(try JSON.parse(Array(again.out.utf8))["sealed"] == .int(0))
    }

    @Test func sealsAsOVE1AndRemovesStaleTemporaries() throws {
        let s = Scratch()
        let key = s.key("k")
        s.write("b/acme/x", Array("ove1 please".utf8))
        s.write("b/acme/" + AdminTemporary.prefix + "leftover", Array("junk".utf8))
        let r = admin(["seal", s.path + "/b", "--key-file", key, "--format", "ove1", "--json", "--quiet"])
        #expect(r.status == 0)
        #expect(try JSON.parse(Array(r.out.utf8))["stale_temporaries_removed"] == .int(1))
        let ring = try KeySource.parse(["root_key_file": key]).loadKeyRing()
        let opened = try SealedFile.openWhole(s.read("b/acme/x"), account: "acme", keyRing: ring)
        #expect(opened.kind == .ove1 && opened.plaintext == Array("ove1 please".utf8))
        #expect(access(s.path + "/b/acme/" + AdminTemporary.prefix + "leftover", F_OK) != 0)
    }

    @Test func refusesWithoutKeyCheckWhenSealedFilesExist() throws {
        let s = Scratch()
        let key = s.key("k")
        s.write("b/acme/x", Array("data".utf8))
        #expect(admin(["seal", s.path + "/b", "--key-file", key, "--quiet"]).status == 0)
        unlink(s.path + "/b/backend_meta.json")
        s.write("b/acme/y", Array("more".utf8))
        let r = admin(["seal", s.path + "/b", "--key-file", key, "--quiet"])
        #expect(r.status == 3)
        #expect(r.err.contains("missing"))
        #expect(s.read("b/acme/y") == Array("more".utf8))
        let other = s.key("k2")
        s.write("c/acme/x", Array("data".utf8))
        #expect(admin(["seal", s.path + "/c", "--key-file", key, "--quiet"]).status == 0)
        #expect(admin(["seal", s.path + "/c", "--key-file", other, "--quiet"]).status == 3)
        #expect(admin(["fsck", s.path + "/c", "--key-file", other, "--quiet"]).status == 3)
    }

    @Test func fsckNamesEachKindOfDamage() throws {
        let s = Scratch()
        let key = s.key("k")
        let big = (0..<(4096 * 4 + 100)).map { UInt8(truncatingIfNeeded: $0) }
        for name in ["header", "middle", "last", "truncated", "swapA", "swapB", "moved", "fine"] {
            s.write("b/acme/\(name)", big)
        }
        s.write("b/globex/keep", Array("globex".utf8))
        #expect(admin(["seal", s.path + "/b", "--key-file", key, "--quiet"]).status == 0)
        let stored = 4096 + 28
        func flip(_ name: String, at offset: Int) {
            var bytes = s.read("b/acme/" + name)
            bytes[offset] ^= 0x40
            s.write("b/acme/" + name, bytes)
        }
        flip("header", at: 60)
        flip("middle", at: 96 + 2 * stored + 100)
        flip("last", at: s.read("b/acme/last").count - 5)
        truncate(s.path + "/b/acme/truncated", off_t(s.read("b/acme/truncated").count - 50))
        var a = s.read("b/acme/swapA")
        let b = s.read("b/acme/swapB")
        a.replaceSubrange((96 + stored)..<(96 + 2 * stored), with: b[(96 + stored)..<(96 + 2 * stored)])
        s.write("b/acme/swapA", a)
        rename(s.path + "/b/acme/moved", s.path + "/b/globex/moved")

        let r = admin(["fsck", s.path + "/b", "--key-file", key, "--json", "--quiet"])
        #expect(r.status == 1)
        let report = try JSON.parse(Array(r.out.utf8))
        guard case .array(let problems)? = report["problems"] else { Issue.record("no problems"); return }
        var byPath: [String: String] = [:]
        for p in problems { byPath[p["path"]?.stringValue ?? "", default: ""] += p["message"]?.stringValue ?? "" }
        #expect(byPath["acme/header"]?.contains("bad header") == true)
        #expect(byPath["acme/middle"]?.contains("block 2 of 5 fails") == true)
        #expect(byPath["acme/last"]?.contains("block 4 of 5 fails") == true)
        #expect(byPath["acme/truncated"]?.contains("truncated") == true)
        #expect(byPath["acme/swapA"]?.contains("block 1 of 5 fails") == true)
        #expect(byPath["globex/moved"]?.contains("wrong account") == true && byPath["globex/moved"]?.contains("'acme'") == true)
        #expect(byPath["acme/fine"] == nil && byPath["acme/swapB"] == nil && byPath["globex/keep"] == nil)
        #expect(report["damaged_files"] == .int(6))

        let inspect = admin(["inspect", s.path + "/b/acme/middle", s.path + "/b/acme/fine", "--key-file", key, "--json"])
        #expect(inspect.status == 1)
        let files = try JSON.parse(Array(inspect.out.utf8))["files"]
        guard case .array(let list)? = files, list.count == 2 else { Issue.record("inspect output"); return }
        #expect(list[0]["authenticates"] == .bool(false))
        #expect(list[1]["authenticates"] == .bool(true))
        #expect(list[1]["blocks"] == .int(5))
        #expect(list[1]["plaintext_size"] == .int(Int64(big.count)))
        #expect(list[1]["account"]?.stringValue == "acme")
        #expect(admin(["decrypt", s.path + "/b/acme/middle", "--key-file", key]).bytes.isEmpty)
    }

    @Test func rotatesResumesAndRetiresTheOldKey() throws {
        let s = Scratch()
        let old = s.key("old")
        let new = s.key("new")
        var plain: [String: [UInt8]] = [:]
        for i in 0..<40 {
            let bytes = Array("file \(i) ".utf8) + Array(repeating: UInt8(i), count: i * 300)
            plain["acme/d\(i % 3)/f\(i)"] = bytes
            s.write("b/acme/d\(i % 3)/f\(i)", bytes)
        }
        #expect(admin(["seal", s.path + "/b", "--key-file", old, "--quiet"]).status == 0)
        s.write("b/globex/o.json", Array("ove1 content".utf8))
        plain["globex/o.json"] = Array("ove1 content".utf8)
        #expect(admin(["seal", s.path + "/b", "--key-file", old, "--format", "ove1", "--quiet"]).status == 0)
        let dir = s.path + "/b/acme"
        do {
            let fd = open(dir, O_RDONLY | O_DIRECTORY)
            defer { close(fd) }
            _ = fsetxattr(fd, "user.tag", "dirtag", 6, 0)
        }
        #expect(admin(["seal", s.path + "/b", "--key-file", old, "--quiet"]).status == 0)

        let r = admin(["rotate-root-key", s.path + "/b", "--key-file", old, "--new-key-file", new, "--json", "--quiet"])
        #expect(r.status == 0, "\(r.err)")
        let report = try JSON.parse(Array(r.out.utf8))
        #expect(report["rotated"] == .int(41))
        #expect(report["xattrs_resealed"] == .int(1))
        #expect(report["key_check"]?.stringValue == "re-written under the new key")
        #expect(admin(["fsck", s.path + "/b", "--key-file", old, "--quiet"]).status == 3)
        #expect(admin(["fsck", s.path + "/b", "--key-file", new, "--quiet"]).status == 0)
        for (path, bytes) in plain {
            #expect(admin(["decrypt", s.path + "/b/" + path, "--key-file", new]).bytes == bytes)
            #expect(admin(["decrypt", s.path + "/b/" + path, "--key-file", old]).status != 0)
        }
        let again = admin(["rotate-root-key", s.path + "/b", "--key-file", old, "--new-key-file", new, "--json", "--quiet"])
        #expect(try JSON.parse(Array(again.out.utf8))["skipped_already_new"] == .int(41))
        #expect(admin(["rotate-root-key", s.path + "/b", "--key-file", new, "--new-key-file", new]).status == 2)
    }

    @Test func journalRepairsATornHeader() throws {
        let s = Scratch()
        let old = s.key("old")
        let new = s.key("new")
        s.write("b/acme/f", Array(repeating: 0x41, count: 10_000))
        #expect(admin(["seal", s.path + "/b", "--key-file", old, "--quiet"]).status == 0)
        let oldBytes = s.read("b/acme/f")
        // Compute what rotation would write, then simulate a power loss that tore the header write.
        let ring = KeyRing(primary: try KeyFileProvider(path: new).loadRootKey(),
                           previous: [try KeyFileProvider(path: old).loadRootKey()], providerKind: .localFile)
        let header = try NativeHeader.parse(oldBytes)
        let cipher = try SealedFile.openNative(header, account: "acme", keyRing: ring).cipher
        let newHeader = try cipher.rewrapped(accountKey: ring.accountKey("acme"), account: "acme", rootKeyID: ring.primary.keyID).serialized()
        var torn = oldBytes
        torn.replaceSubrange(0..<64, with: newHeader[0..<64])
        s.write("b/acme/f", torn)
        s.write("b/" + AdminTemporary.journalName, RotationJournal.encode([.init(path: RelativePath("acme/f"), header: newHeader)]))
        #expect(admin(["fsck", s.path + "/b", "--key-file", new, "--old-key-file", old, "--quiet"]).status == 1)

        let r = admin(["rotate-root-key", s.path + "/b", "--key-file", old, "--new-key-file", new, "--json", "--quiet"])
        #expect(r.status == 0, "\(r.err)")
        #expect(try JSON.parse(Array(r.out.utf8))["torn_headers_repaired"] == .int(1))
        #expect(admin(["decrypt", s.path + "/b/acme/f", "--key-file", new]).bytes == Array(repeating: 0x41, count: 10_000))
        #expect(access(s.path + "/b/" + AdminTemporary.journalName, F_OK) != 0)
    }

    @Test func refusesAConcurrentRun() throws {
        let s = Scratch()
        let key = s.key("k")
        s.write("b/acme/x", Array("x".utf8))
        let tree = try BackingTree(path: s.path + "/b")
        let lock = try TreeLock(tree: tree, command: "test")
        let r = admin(["seal", s.path + "/b", "--key-file", key])
        #expect(r.status == 2)
        #expect(r.err.contains("another vikingfs admin command"))
        withExtendedLifetime(lock) {}
    }

    @Test func sealsPlaintextXattrsInPlaceWithoutOverwritingSealedOnes() throws {
        let s = Scratch()
        let key = s.key("k")
        s.write("b/acme/docs/f", [])
        let ring = try KeySource.parse(["root_key_file": key]).loadKeyRing()
        let dir = s.path + "/b/acme/docs"
        let fd = open(dir, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        func set(_ name: String, _ value: [UInt8]) { _ = Posix.setXattr(fd, Array(name.utf8), value) }
        func get(_ name: String) -> [UInt8]? { try? Posix.getXattr(fd, Array(name.utf8)).get() }
        let sealedY = try XattrCodec.seal(value: Array("y".utf8), visibleName: "user.b", accountKey: ring.accountKey("acme"))
        let sealedZ = try XattrCodec.seal(value: Array("z".utf8), visibleName: "user.c", accountKey: ring.accountKey("acme"))
        set("user.a", Array("plain".utf8))
        set("user.b", Array("x".utf8)); set("user.vikingfs.b", sealedY)      // differs: a conflict, kept
        set("user.c", Array("z".utf8)); set("user.vikingfs.c", sealedZ)      // equal: a crash between set and remove
        let r = admin(["seal", s.path + "/b", "--key-file", key, "--json", "--quiet"])
        #expect(r.status == 4)
        #expect(r.err.contains("user.b is held both in plaintext and sealed"))
        #expect(get("user.a") == nil)
        #expect(try XattrCodec.open(sealed: get("user.vikingfs.a") ?? [], visibleName: "user.a", accountKey: ring.accountKey("acme")) == Array("plain".utf8))
        #expect(get("user.b") == Array("x".utf8) && get("user.vikingfs.b") == sealedY)
        #expect(get("user.c") == nil && get("user.vikingfs.c") == sealedZ)
        #expect(try JSON.parse(Array(r.out.utf8))["xattrs_sealed"] == .int(2))
        let fsck = admin(["fsck", s.path + "/b", "--key-file", key, "--json", "--quiet"])
        #expect(try JSON.parse(Array(fsck.out.utf8))["with_plaintext_xattrs"] == .int(1))
    }

    @Test func initKeyNeverOverwrites() throws {
        let s = Scratch()
        let r = admin(["init-key", "--key-file", s.path + "/k", "--json"])
        #expect(r.status == 0)
        var st = stat()
        stat(s.path + "/k", &st)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(st.st_size == 65)
        let id = try JSON.parse(Array(r.out.utf8))["key_id"]?.stringValue
        #expect(id == (try KeyFileProvider(path: s.path + "/k").loadRootKey().keyIDHex))
        #expect(!r.out.contains(String(decoding: s.read("k").prefix(64), as: UTF8.self)))
        #expect(admin(["init-key", "--key-file", s.path + "/k"]).status == 2)
        #expect(admin(["init-key"]).status == 2)
        #expect(admin(["fsck", s.path, "--key-file", s.path + "/missing"]).status == 3)
        #expect(admin(["fsck", s.path]).status == 2)
        #expect(admin(["frobnicate"]).status == 2)
        #expect(admin(["seal", "--help"]).out.contains("usage: vikingfs seal"))
    }
}

@Suite struct APIKeyCommandTests {
    static let vectors = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../shared/vectors/ove1").standardized.path

    @Test func hashesAndVerifies() throws {
        let hashed = admin(["apikey", "hash"], input: .bytes(Array("sk-test-key\n".utf8)))
        #expect(hashed.status == 0)
        let phc = hashed.out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(phc.hasPrefix("$argon2id$v=19$m=65536,t=3,p=2$"))
        #expect(admin(["apikey", "verify", "--hash", phc], input: .bytes(Array("sk-test-key".utf8))).status == 0)
        #expect(admin(["apikey", "verify", "--hash", phc], input: .bytes(Array("sk-test-kez".utf8))).status == 1)
        #expect(admin(["apikey", "verify", "--hash", "$argon2i$nonsense"], input: .bytes(Array("x".utf8))).status == 2)
        #expect(admin(["apikey", "verify"], input: .bytes(Array("x".utf8))).status == 2)
        #expect(admin(["apikey", "hash"], input: .bytes([])).status == 2)
        #expect(admin(["apikey", "hash", "sk-on-argv"]).status == 2)
    }

    @Test func verifiesArgon2CffiVectors() throws {
        guard let data = FileManager.default.contents(atPath: APIKeyCommandTests.vectors + "/argon2id-apikeys.json") else {
            Issue.record("vectors not found at \(APIKeyCommandTests.vectors)"); return
        }
        guard case .array(let items) = try JSON.parse(Array(data)) else { Issue.record("bad vectors"); return }
        for item in items {
            guard let key = item["key"]?.stringValue, let hash = item["hash"]?.stringValue else { continue }
            #expect(admin(["apikey", "verify", "--hash", hash], input: .bytes(Array(key.utf8))).status == 0)
            #expect(admin(["apikey", "verify", "--hash", hash], input: .bytes(Array((key + "x").utf8))).status == 1)
        }
    }

    @Test func migratesUsersFiles() throws {
        let s = Scratch()
        let key = s.key("k")
        let plaintextUsers = #"{"users": {"alice": {"role": "admin", "key": "sk-alice-0123456789", "key_prefix": "sk-alice"}, "bob": {"role": "user", "key": "bob-key-abcdef"}}}"#
        let hashed = try APIKeyHasher.hash(Array("carol-key".utf8))
        let hashedUsers = #"{"users": {"carol": {"role": "user", "key": "\#(hashed)", "key_prefix": "carol-ke"}}}"#
        let malformed = Array(#"{"users": {"dave": "#.utf8)
        s.write("b/acme/_system/users.json", Array(plaintextUsers.utf8))
        s.write("b/globex/_system/users.json", Array(hashedUsers.utf8))
        s.write("b/initech/_system/users.json", malformed)
        s.write("b/acme/other.json", Array(#"{"key": "not a users file"}"#.utf8))
        // Seal acme's as native, globex's as OVE1; initech's malformed file sealed too.
        #expect(admin(["seal", s.path + "/b", "--key-file", key, "--quiet"]).status == 0)
        unlink(s.path + "/b/globex/_system/users.json")
        s.write("b/globex/_system/users.json", Array(hashedUsers.utf8))
        #expect(admin(["seal", s.path + "/b", "--key-file", key, "--format", "ove1", "--quiet"]).status == 0)
        let before = ["globex": s.read("b/globex/_system/users.json"), "initech": s.read("b/initech/_system/users.json"),
                      "other": s.read("b/acme/other.json")]

        let dry = admin(["apikey", "migrate", s.path + "/b", "--key-file", key, "--dry-run"])
        #expect(dry.out.contains("would migrate: acme/_system/users.json: 2 keys hashed"))
        let r = admin(["apikey", "migrate", s.path + "/b", "--key-file", key, "--json", "--quiet"])
        #expect(r.status == 1)  // the malformed file is reported
        let report = try JSON.parse(Array(r.out.utf8))
        #expect(report["files_migrated"] == .int(1))
        #expect(report["keys_hashed"] == .int(2))
        #expect(s.read("b/globex/_system/users.json") == before["globex"])
        #expect(s.read("b/initech/_system/users.json") == before["initech"])
        #expect(s.read("b/acme/other.json") == before["other"])

        let ring = try KeySource.parse(["root_key_file": key]).loadKeyRing()
        let opened = try SealedFile.openWhole(s.read("b/acme/_system/users.json"), account: "acme", keyRing: ring)
        #expect(opened.kind == .native)
        let users = try JSON.parse(opened.plaintext)
        let alice = users["users"]?["alice"]
        let bob = users["users"]?["bob"]
        #expect(alice?["key_prefix"]?.stringValue == "sk-alice")
        #expect(alice?["role"]?.stringValue == "admin")
        #expect(bob?["key_prefix"]?.stringValue == "bob-key-")
        #expect(try APIKeyHasher.verify(Array("sk-alice-0123456789".utf8), phc: alice?["key"]?.stringValue ?? ""))
        #expect(try APIKeyHasher.verify(Array("bob-key-abcdef".utf8), phc: bob?["key"]?.stringValue ?? ""))

        let again = admin(["apikey", "migrate", s.path + "/b", "--key-file", key, "--json", "--quiet"])
        #expect(try JSON.parse(Array(again.out.utf8))["files_migrated"] == .int(0))
    }
}
