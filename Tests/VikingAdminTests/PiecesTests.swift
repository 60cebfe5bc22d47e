import Testing
@testable import VikingAdmin
import VikingFormat
import VikingJSON

@Suite struct UsersMigrationTests {
    let fakeHash: ([UInt8]) throws -> String = { "$argon2id$v=19$m=65536,t=3,p=2$salt$" + String(decoding: $0, as: UTF8.self) }

    @Test func hashesPlaintextKeysAndKeepsEverythingElse() throws {
        let input = #"{"version": 2, "users": {"alice": {"role": "admin", "key": "sk-alice-123456", "key_prefix": "sk-abcde"}, "bob": {"key": "bobkey-9999", "role": "user", "extra": [1, 2]}}, "tail": null}"#
        let outcome = UsersFileMigration.migrate(Array(input.utf8), hasher: fakeHash)
        guard case .migrated(let document, let users) = outcome else { Issue.record("not migrated: \(outcome)"); return }
        #expect(users == ["alice", "bob"])
        let expected = #"{"version": 2, "users": {"alice": {"role": "admin", "key": "$argon2id$v=19$m=65536,t=3,p=2$salt$sk-alice-123456", "key_prefix": "sk-abcde"}, "bob": {"key": "$argon2id$v=19$m=65536,t=3,p=2$salt$bobkey-9999", "role": "user", "extra": [1, 2], "key_prefix": "bobkey-9"}}, "tail": null}"#
        #expect(String(decoding: document, as: UTF8.self) == expected)
    }

    @Test func isIdempotent() {
        let input = #"{"users": {"a": {"key": "$argon2id$v=19$m=65536,t=3,p=2$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA", "key_prefix": "abcdefgh"}, "b": {"role": "user"}}}"#
        #expect(UsersFileMigration.migrate(Array(input.utf8), hasher: fakeHash) == .unchanged)
    }

    @Test func prefixCountsCodePoints() throws {
        let input = #"{"users": {"u": {"key": "ünïcødé-key"}}}"#
        guard case .migrated(let document, _) = UsersFileMigration.migrate(Array(input.utf8), hasher: fakeHash) else {
            Issue.record("not migrated"); return
        }
        let value = try JSON.parse(document)
        #expect(value["users"]?["u"]?["key_prefix"]?.stringValue == "ünïcødé-")
    }

    @Test(arguments: ["not json", "[1]", #"{"accounts": {}}"#, #"{"users": []}"#, #"{"users": {"a": "key"}}"#])
    func reportsMalformed(_ text: String) {
        guard case .malformed = UsersFileMigration.migrate(Array(text.utf8), hasher: fakeHash) else {
            Issue.record("accepted \(text)"); return
        }
    }

    @Test func hasherFailureIsReported() {
        struct Boom: Error {}
        let outcome = UsersFileMigration.migrate(Array(#"{"users": {"a": {"key": "k"}}}"#.utf8), hasher: { _ in throw Boom() })
        guard case .malformed = outcome else { Issue.record("not reported"); return }
    }
}

@Suite struct JournalTests {
    @Test func roundTrips() {
        let records = [
            RotationJournal.Record(path: RelativePath("acme/a b/ü"), header: Array(repeating: 7, count: 96)),
            RotationJournal.Record(path: RelativePath(bytes: [0x61, 0x0a, 0xff]), header: Array(repeating: 9, count: 84)),
        ]
        let bytes = RotationJournal.encode(records)
        #expect(RotationJournal.decode(bytes) == records)
        #expect(RotationJournal.decode(RotationJournal.encode([])) == [])
    }

    @Test func tornJournalIsIgnored() {
        let bytes = RotationJournal.encode([RotationJournal.Record(path: RelativePath("x"), header: [1, 2, 3])])
        for cut in 0..<bytes.count { #expect(RotationJournal.decode(Array(bytes.prefix(cut))) == nil) }
        for i in 0..<bytes.count {
            var flipped = bytes
            flipped[i] ^= 0x01
            #expect(RotationJournal.decode(flipped) == nil)
        }
    }

    @Test func identityIsTheFieldsRewrapKeeps() {
        var native = NativeFormat.magic + [1, 12, 0, 96, 0, 0, 0, 0]
        native += Array(1...16) + Array(repeating: 0xaa, count: 96 - 28)
        #expect(RotationJournal.identity(ofHeader: native) == Array(1...16))
        var ove1 = OVE1.magic + [1, 1, 0, 48, 0, 12, 0, 12] + Array(repeating: 0, count: 60)
        ove1 += Array(100..<112)
        #expect(RotationJournal.identity(ofHeader: ove1) == Array(100..<112))
        #expect(RotationJournal.identity(ofHeader: Array("plain".utf8)) == nil)
    }
}

@Suite struct MountTableTests {
    let sample = """
        22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw
        40 22 0:35 / /mnt/viking rw,nosuid,nodev,relatime shared:20 - fuse.vikingfs /srv/openviking/viking rw,user_id=0,group_id=0
        41 22 0:36 / /mnt/with\\040space rw shared:21 - fuse.vikingfs /srv/back\\040up rw
        42 22 0:37 / /mnt/other rw - fuse.gocryptfs /srv/openviking/viking rw
        """

    @Test func findsTheMountServingABackingDir() {
        #expect(MountTable.mounts(serving: "/srv/openviking/viking", mountinfo: sample)
                == [ServingMount(mountPoint: "/mnt/viking", source: "/srv/openviking/viking")])
        #expect(MountTable.mounts(serving: "/srv/back up", mountinfo: sample).map(\.mountPoint) == ["/mnt/with space"])
        #expect(MountTable.mounts(serving: "/srv/openviking", mountinfo: sample).isEmpty)
    }
}

@Suite struct PathAndArgumentTests {
    @Test func escapesForDisplay() {
        #expect(escapeForDisplay(Array("a b/ünï".utf8)) == "a b/ünï")
        #expect(escapeForDisplay(Array("new\nline\\tab\t".utf8)) == "new\\nline\\\\tab\\t")
        #expect(escapeForDisplay([0x61, 0xff, 0xc3]) == "a\\xff\\xc3")
        #expect(escapeForDisplay([0x1b, 0x5b, 0x32, 0x4a]) == "\\x1b[2J")
    }

    @Test func relativePathAccounts() {
        #expect(RelativePath("acme/x/y").account == "acme")
        #expect(RelativePath("rootfile").account == "_system")
        #expect(RelativePath("_system/accounts.json").account == "_system")
        #expect(RelativePath("bad name/x").account == "_system")
        #expect(TreeEntry(path: RelativePath("acme"), kind: .directory).account == "acme")
        #expect(TreeEntry(path: RelativePath("acme"), kind: .regular).account == "_system")
        #expect(RelativePath("a/b/c").parent == RelativePath("a/b"))
        #expect(RelativePath("a/b/c").name == Array("c".utf8))
    }

    @Test func keySourceFlagsMapToMountOptions() throws {
        let inv = try ArgumentParser.parse(["/b", "--key-file", "/k", "--old-key-file=/o", "--new-key-file", "/n", "--dry-run"],
                                           spec: AdminCommands.rotateSpec)
        #expect(inv.positionals == ["/b"])
        #expect(inv.keyOptions == ["root_key_file": "/k", "old_root_key_file": "/o"])
        #expect(inv.newKeyOptions == ["root_key_file": "/n"])
        #expect(inv.flag("dry-run"))
        let generic = try ArgumentParser.parse(["/b", "--root-key-file", "/k", "--provider", "file"], spec: AdminCommands.fsckSpec)
        #expect(generic.keyOptions == ["root_key_file": "/k", "key_provider": "file"])
    }

    @Test func rejectsBadCommandLines() {
        #expect(throws: AdminError.self) { try ArgumentParser.parse(["/b", "--nope"], spec: AdminCommands.fsckSpec) }
        #expect(throws: AdminError.self) { try ArgumentParser.parse(["/b", "--key-file", "a", "--key-file", "b"], spec: AdminCommands.fsckSpec) }
        #expect(throws: AdminError.self) { try ArgumentParser.parse([], spec: AdminCommands.fsckSpec) }
        #expect(throws: AdminError.self) { try ArgumentParser.parse(["/a", "/b"], spec: AdminCommands.fsckSpec) }
        #expect(throws: AdminError.self) { try ArgumentParser.parse(["/b", "--key-file"], spec: AdminCommands.fsckSpec) }
        #expect(throws: AdminError.self) { try ArgumentParser.parse(["/b", "--new-key-file", "/n"], spec: AdminCommands.fsckSpec) }
        #expect(throws: AdminError.self) { try ArgumentParser.parse(["--key-file", "/k"], spec: AdminCommands.apikeyHashSpec) }
    }

    @Test func secretInputDropsOneNewline() {
        #expect(SecretInput.trimNewline(Array("key\n".utf8)) == Array("key".utf8))
        #expect(SecretInput.trimNewline(Array("key\r\n".utf8)) == Array("key".utf8))
        #expect(SecretInput.trimNewline(Array("key\n\n".utf8)) == Array("key\n".utf8))
        #expect(SecretInput.trimNewline(Array(" key ".utf8)) == Array(" key ".utf8))
    }

    @Test func workQueueDeliversEverything() {
        let seen = Tally([Int]())
        withWorkers(jobs: 4, work: { (n: Int) in seen.update { $0.append(n) } }, produce: { push in
            for i in 0..<10_000 { push(i) }
        })
        #expect(seen.value.sorted() == Array(0..<10_000))
    }
}
