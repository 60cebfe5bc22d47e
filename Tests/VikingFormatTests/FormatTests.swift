import Foundation
import Testing
@testable import VikingFormat
import VikingCrypto
import VikingKeys

/// The package root, found from this file's path (Tests/VikingFormatTests/FormatTests.swift).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let sharedVectors = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/vectors/ove1")

private func hex(_ s: String) -> [UInt8] { Hex.decode(s) ?? [] }

private func ring(rootHex: String) throws -> KeyRing {
    KeyRing(primary: try RootKey(bytes: SecureBytes(copying: hex(rootHex))), providerKind: .localFile)
}

struct NativeVectors: Decodable {
    struct Case: Decodable { let account: String; let plaintext_hex: String; let sealed_hex: String }
    let root_key_hex: String
    let root_key_id_hex: String
    let file_key_hex: String
    let file_id_hex: String
    let key_nonce_hex: String
    let block_nonces_hex: [String]
    let block_shift: UInt8
    let cases: [Case]

    static func load() throws -> NativeVectors {
        let data = try Data(contentsOf: packageRoot.appendingPathComponent("Tests/VikingFormatTests/vectors/native-kat.json"))
        return try JSONDecoder().decode(NativeVectors.self, from: data)
    }
}

@Suite("Native format known answers")
struct NativeKnownAnswerTests {
    // The vectors were produced by Tests/integration/vikingfs_ref.py, an independent Python implementation of
    // docs/format.md; the Swift sealer must produce the same bytes and open them.
    @Test func sealingMatchesReferenceImplementation() throws {
        let v = try NativeVectors.load()
        let keys = try ring(rootHex: v.root_key_hex)
        #expect(keys.primary.keyIDHex == v.root_key_id_hex)
        for c in v.cases {
            let cipher = try NativeFileCipher.create(accountKey: try keys.accountKey(c.account), account: c.account,
                                                     rootKeyID: keys.primary.keyID, blockShift: v.block_shift,
                                                     fileKey: SecureBytes(copying: hex(v.file_key_hex)),
                                                     fileID: hex(v.file_id_hex), keyNonce: hex(v.key_nonce_hex))
            var out = cipher.header.serialized()
            let plaintext = hex(c.plaintext_hex)
            let blockSize = cipher.layout.blockSize
            var index = 0
            while index * blockSize < plaintext.count {
                let chunk = Array(plaintext[(index * blockSize)..<min(plaintext.count, (index + 1) * blockSize)])
                var slot = [UInt8](repeating: 0, count: chunk.count + NativeFormat.blockOverhead)
                let nonce = hex(v.block_nonces_hex[index])
                try nonce.withUnsafeBytes { n in
                    try chunk.withUnsafeBytes { p in
                        try slot.withUnsafeMutableBytes { o in _ = try cipher.sealBlock(index: UInt64(index), nonce: n, plaintext: p, output: o) }
                    }
                }
                out += slot
                index += 1
            }
            #expect(Hex.encode(out) == c.sealed_hex, "case \(c.account) / \(plaintext.count) bytes")
            let opened = try SealedFile.openWhole(hex(c.sealed_hex), account: c.account, keyRing: keys)
            #expect(opened.kind == .native)
            #expect(opened.plaintext == plaintext)
        }
    }

    @Test func headerFromAnotherAccountDoesNotOpen() throws {
        let v = try NativeVectors.load()
        let keys = try ring(rootHex: v.root_key_hex)
        let sealed = hex(v.cases[1].sealed_hex)
        #expect(throws: FormatError.keyUnwrapFailed(account: "globex")) {
            _ = try SealedFile.openWhole(sealed, account: "globex", keyRing: keys)
        }
    }

    @Test func everyFlippedByteIsDetected() throws {
        let v = try NativeVectors.load()
        let keys = try ring(rootHex: v.root_key_hex)
        let sealed = hex(v.cases[2].sealed_hex)
        // Every header byte after the magic and a sample across blocks: each flip must fail, never return other
        // bytes. A damaged magic makes the file legacy plaintext by definition (see damagedMagicIsLegacy).
        let positions = Array(4..<NativeFormat.headerLength) + stride(from: 96, to: sealed.count, by: 97).map { $0 }
        for position in positions {
            var damaged = sealed
            damaged[position] ^= 0x01
            #expect(throws: (any Error).self, "flip at \(position)") { _ = try SealedFile.openWhole(damaged, account: "_system", keyRing: keys) }
        }
    }

    @Test func damagedMagicIsLegacy() throws {
        // Legacy files are unauthenticated by design; the threat model says so, and `no_legacy` refuses them.
        let v = try NativeVectors.load()
        var sealed = hex(v.cases[1].sealed_hex)
        sealed[0] ^= 1
        #expect(FileKind.classify(prefix: Array(sealed.prefix(4)), size: Int64(sealed.count)) == .legacy)
    }

    @Test func swappedBlocksAreDetected() throws {
        let v = try NativeVectors.load()
        let keys = try ring(rootHex: v.root_key_hex)
        var sealed = hex(v.cases[2].sealed_hex)
        let stored = 4096 + 28
        let first = Array(sealed[96..<(96 + stored)])
        let second = Array(sealed[(96 + stored)..<(96 + 2 * stored)])
        sealed.replaceSubrange(96..<(96 + stored), with: second)
        sealed.replaceSubrange((96 + stored)..<(96 + 2 * stored), with: first)
        #expect(throws: FormatError.blockAuthenticationFailed(index: 0)) { _ = try SealedFile.openWhole(sealed, account: "_system", keyRing: keys) }
    }

    @Test func allZeroBlockReadsAsHole() throws {
        let keys = try ring(rootHex: String(repeating: "11", count: 32))
        let cipher = try NativeFileCipher.create(accountKey: try keys.accountKey("acme"), account: "acme", rootKeyID: keys.primary.keyID)
        var file = try cipher.sealWhole([UInt8](repeating: 9, count: 4096 * 3))
        file.replaceSubrange(96 + 4124..<(96 + 2 * 4124), with: [UInt8](repeating: 0, count: 4124))
        let opened = try SealedFile.openWhole(file, account: "acme", keyRing: keys).plaintext
        #expect(opened[0..<4096].allSatisfy { $0 == 9 })
        #expect(opened[4096..<8192].allSatisfy { $0 == 0 })
        #expect(opened[8192...].allSatisfy { $0 == 9 })
    }
}

@Suite("Native layout")
struct LayoutTests {
    @Test(arguments: [0, 1, 4095, 4096, 4097, 8192, 1 << 20, 123_457])
    func sizesRoundTrip(plaintext: Int) {
        let layout = NativeLayout(blockShift: 12)
        let backing = layout.backingSize(forPlaintext: Int64(plaintext))
        #expect(layout.plaintextSize(forBacking: backing) == Int64(plaintext))
        let blocks = (plaintext + 4095) / 4096
        #expect(backing == Int64(96 + plaintext + 28 * blocks))
    }

    @Test func damagedTailCountsAsNothing() {
        let layout = NativeLayout(blockShift: 12)
        #expect(layout.plaintextSize(forBacking: 96 + 4124 + 10) == 4096)
        #expect(layout.plaintextSize(forBacking: 50) == 0)
    }
}

@Suite("Header parsing")
struct HeaderParsingTests {
    @Test func truncatedAndMalformedNativeHeadersAreClearErrors() throws {
        let good = try NativeFileCipher.create(accountKey: SecureBytes(count: 32), account: "a", rootKeyID: [UInt8](repeating: 0, count: 8)).header.serialized()
        for length in [0, 3, 7, 8, 50, 95] {
            #expect(throws: (any Error).self) { _ = try NativeHeader.parse(Array(good.prefix(length))) }
        }
        var version = good; version[4] = 9
        #expect(throws: FormatError.unsupportedVersion(format: "VKFS", version: 9)) { _ = try NativeHeader.parse(version) }
        var shift = good; shift[5] = 40
        #expect(throws: FormatError.malformedHeader("block size 2^40 out of range")) { _ = try NativeHeader.parse(shift) }
        var length = good; length[7] = 0x61
        #expect(throws: FormatError.malformedHeader("header length 97, expected 96")) { _ = try NativeHeader.parse(length) }
        var reserved = good; reserved[9] = 1
        #expect(throws: FormatError.malformedHeader("reserved bytes are not zero")) { _ = try NativeHeader.parse(reserved) }
        #expect(try NativeHeader.parse(good).serialized() == good)
    }

    @Test func truncatedAndMalformedOVE1HeadersAreClearErrors() throws {
        let sealed = try OVE1.seal([1, 2, 3], accountKey: SecureBytes(count: 32), provider: 1)
        for length in [0, 4, 11, 12, 40, 83] {
            #expect(throws: (any Error).self) { _ = try Array(sealed.prefix(length)).withUnsafeBytes { try OVE1.parseHeader($0) } }
        }
        var badLength = sealed; badLength[7] = 47
        #expect(throws: FormatError.malformedHeader("wrapped key length 47, expected 48")) {
            _ = try badLength.withUnsafeBytes { try OVE1.parseHeader($0) }
        }
        var badVersion = sealed; badVersion[4] = 2
        #expect(throws: FormatError.unsupportedVersion(format: "OVE1", version: 2)) {
            _ = try badVersion.withUnsafeBytes { try OVE1.parseHeader($0) }
        }
        // Header intact, content tag missing.
        #expect(throws: (any Error).self) { _ = try OVE1.open(Array(sealed.prefix(OVE1.headerLength + 5)), accountKey: SecureBytes(count: 32), account: "a") }
    }

    @Test func classification() {
        #expect(FileKind.classify(prefix: [], size: 0) == .empty)
        #expect(FileKind.classify(prefix: Array("VKFS".utf8), size: 96) == .native)
        #expect(FileKind.classify(prefix: Array("OVE1".utf8), size: 100) == .ove1)
        #expect(FileKind.classify(prefix: Array("OV".utf8), size: 2) == .legacy)
        #expect(FileKind.classify(prefix: Array("# hi".utf8), size: 4) == .legacy)
    }
}

@Suite("OVE1 fixtures sealed by OpenViking")
struct OVE1FixtureTests {
    struct Expected: Decodable { let account: String; let sealed: Bool; let sha256: String; let size: Int }

    @Test func everyFixtureReadsBackExactly() throws {
        let keyHex = try String(contentsOf: sharedVectors.appendingPathComponent("master.key"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let keys = try ring(rootHex: keyHex)
        let expected = try JSONDecoder().decode([String: Expected].self,
                                                from: Data(contentsOf: sharedVectors.appendingPathComponent("expected.json")))
        #expect(expected.count > 10)
        for (path, e) in expected {
            #expect(Account.ofFile(path: path) == e.account, "\(path)")
            let bytes = [UInt8](try Data(contentsOf: sharedVectors.appendingPathComponent("viking").appendingPathComponent(path)))
            let opened = try SealedFile.openWhole(bytes, account: e.account, keyRing: keys)
            #expect((opened.kind == .ove1) == e.sealed || (e.size == 0 && opened.kind == .empty), "\(path)")
            #expect(opened.plaintext.count == e.size, "\(path)")
            #expect(SHA256.hex(opened.plaintext) == e.sha256, "\(path)")
        }
    }

    @Test func keyCheckOpensWithTheFixtureKeyOnly() throws {
        let keyHex = try String(contentsOf: sharedVectors.appendingPathComponent("master.key"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let root = sharedVectors.appendingPathComponent("viking").path
        #expect(try KeyCheck.verify(backingRoot: root, keyRing: try ring(rootHex: keyHex)) == .valid(keyIndex: 0))
        #expect(throws: KeyCheck.Failure.self) { try KeyCheck.verify(backingRoot: root, keyRing: try ring(rootHex: String(repeating: "ab", count: 32))) }
    }

    @Test func ove1RoundTripAndLayout() throws {
        let keys = try ring(rootHex: String(repeating: "42", count: 32))
        let plaintext = Array("zero API intrusion".utf8)
        let sealed = try SealedFile.sealWhole(plaintext, kind: .ove1, account: "acme", keyRing: keys)
        #expect(sealed.count == plaintext.count + OVE1.overhead)
        #expect(Array(sealed[0..<12]) == [0x4f, 0x56, 0x45, 0x31, 0x01, 0x01, 0x00, 0x30, 0x00, 0x0c, 0x00, 0x0c])
        #expect(try SealedFile.openWhole(sealed, account: "acme", keyRing: keys).plaintext == plaintext)
    }
}

@Suite("Accounts")
struct AccountTests {
    @Test(arguments: [
        ("acme/resources/doc.md", "acme"), ("/acme/x", "acme"), ("_system/accounts.json", "_system"),
        ("backend_meta.json", "_system"), ("user@example.com/x", "user@example.com"), ("a@b@c/x", "_system"),
        ("../x/y", "_system"), ("./x", "_system"), ("_private/x", "_system"), ("bad name/x", "_system"),
        ("t-1.2_x/y", "t-1.2_x"),
    ])
    func accountOfFile(path: String, account: String) {
        #expect(Account.ofFile(path: path) == account)
    }

    @Test func directoriesInTheRootAreAccounts() {
        #expect(Account.of(path: "acme") == "acme")
        #expect(Account.ofFile(path: "acme") == "_system")
        #expect(!Account.isValidID(""))
        #expect(!Account.isValidID(".."))
        #expect(Account.isValidID("a.b"))
    }
}
