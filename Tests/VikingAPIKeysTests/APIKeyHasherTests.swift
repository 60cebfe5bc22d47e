import Foundation
import Testing
@testable import VikingAPIKeys

/// Locations of fixtures, from this file: the package root is 3 levels up (Tests/VikingAPIKeysTests/<file>),
/// and the shared vectors live in `../shared` beside the package root.
enum Fixtures {
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let packageRoot = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
    static let openVikingVectors = packageRoot.deletingLastPathComponent()
        .appendingPathComponent("shared/vectors/ove1/argon2id-apikeys.json")
    /// Hashes made by this module and checked by Python argon2-cffi (see crosscheck.py beside this file).
    static let vikingfsMadeHashes = testsDirectory.appendingPathComponent("vikingfs-made-hashes.json")

    struct Entry: Codable { let key: String; let hash: String }

    static func load(_ url: URL) throws -> [Entry] {
        try JSONDecoder().decode([Entry].self, from: Data(contentsOf: url))
    }
}

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// A key that differs from `key` (one byte changed, or one byte added if it is empty).
private func wrongKey(_ key: String) -> [UInt8] {
    var b = bytes(key)
    if b.isEmpty { return [0x61] }
    b[b.count - 1] ^= 0x01
    return b
}

/// OpenViking's hash shape: its parameters, 16-byte salt (22 chars) and 32-byte hash (43 chars), no padding.
private var openVikingShape: Regex<Substring> { #/^\$argon2id\$v=19\$m=65536,t=3,p=2\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/# }

@Suite("OpenViking vectors (argon2-cffi)")
struct OpenVikingVectorTests {
    @Test func vectorsFileHasEntries() throws {
        let entries = try Fixtures.load(Fixtures.openVikingVectors)
        #expect(entries.count >= 4)
        for e in entries {
            #expect(e.hash.wholeMatch(of: openVikingShape) != nil, "unexpected shape: \(e.hash)")
            #expect(APIKeyHasher.isHash(e.hash))
            #expect(!APIKeyHasher.isHash(e.key))
        }
    }

    @Test(arguments: 0..<4)
    func verifiesVector(index: Int) throws {
        let entries = try Fixtures.load(Fixtures.openVikingVectors)
        try #require(index < entries.count)
        let e = entries[index]
        #expect(try APIKeyHasher.verify(bytes(e.key), phc: e.hash), "vector \(index) did not verify")
        #expect(try !APIKeyHasher.verify(wrongKey(e.key), phc: e.hash), "wrong key verified for vector \(index)")
    }

    /// Any entries beyond the four above, so a grown vectors file is still fully covered.
    @Test func verifiesAllVectors() throws {
        let entries = try Fixtures.load(Fixtures.openVikingVectors)
        for e in entries.dropFirst(4) {
            #expect(try APIKeyHasher.verify(bytes(e.key), phc: e.hash))
            #expect(try !APIKeyHasher.verify(wrongKey(e.key), phc: e.hash))
        }
    }

    @Test func parsesAndReserializesIdentically() throws {
        for e in try Fixtures.load(Fixtures.openVikingVectors) {
            let phc = try PHCString(parsing: e.hash)
            #expect(phc.variant == "argon2id")
            #expect(phc.version == 19)
            #expect(phc.m == 65536 && phc.t == 3 && phc.p == 2)
            #expect(phc.salt.count == 16 && phc.hash.count == 32)
            #expect(phc.encoded == e.hash)
            #expect(phc.description == e.hash)
        }
    }
}

/// Hashes made by this module (APIKeyHasher.hash) and verified by Python argon2-cffi 25.1.0 with
/// `Tests/VikingAPIKeysTests/crosscheck.py` (PasswordHasher().verify, parameters checked, raw hash recomputed
/// with argon2.low_level.hash_secret_raw). Re-verified here so our verifier keeps agreeing with our hasher's
/// past output.
@Suite("vikingfs-made hashes, checked by argon2-cffi")
struct VikingfsMadeHashTests {
    @Test func reverifiesCrossCheckedHashes() throws {
        let entries = try Fixtures.load(Fixtures.vikingfsMadeHashes)
        #expect(entries.count >= 5)
        for e in entries {
            #expect(e.hash.wholeMatch(of: openVikingShape) != nil, "unexpected shape: \(e.hash)")
            #expect(try APIKeyHasher.verify(bytes(e.key), phc: e.hash), "did not verify: \(e.key)")
            #expect(try !APIKeyHasher.verify(wrongKey(e.key), phc: e.hash), "wrong key verified: \(e.key)")
        }
    }

    /// Regenerates vikingfs-made-hashes.json (then run crosscheck.py). Off unless VIKINGFS_WRITE_APIKEY_FIXTURE is set.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["VIKINGFS_WRITE_APIKEY_FIXTURE"] != nil))
    func writeFixture() throws {
        let keys = [
            "sk-live-0123456789abcdef",
            "8f14e45fceea167a5a36dedd4bea2543a6e2b1c8f0d9e7c3b5a4f6e8d0c2b4a6",
            "ünïcødé-key-ключ-鍵-🔑",
            String(repeating: "k", count: 1000),
            "x",
            "",
        ]
        let entries = try keys.map { Fixtures.Entry(key: $0, hash: try APIKeyHasher.hash(bytes($0))) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .withoutEscapingSlashes]
        try (encoder.encode(entries) + Data("\n".utf8)).write(to: Fixtures.vikingfsMadeHashes)
    }
}

/// Hashes made by Python argon2-cffi 25.1.0 `PasswordHasher(type=Type.ID, ...)` with parameters other than
/// OpenViking's: verify must use the parameters stored in the hash.
@Suite("Other parameters")
struct OtherParameterTests {
    static let cases: [(key: String, hash: String)] = [
        ("other-params-key-1", "$argon2id$v=19$m=8192,t=1,p=1$LlxLgOqskX0+02cP9zFAXw$sx8gk6XRuWaS6RWnaRxA8zYOhL5rhHjEGlCjn2V+ovY"),
        ("owasp-19MiB-key", "$argon2id$v=19$m=19456,t=2,p=1$rZQAzhHTLoNJRvpiCRftIw$Nf346zEckZ+6w5B338ns8flN6uWlRlXpeVU3mu5M88w"),
        ("short-salt-short-hash", "$argon2id$v=19$m=4096,t=4,p=4$Pk053AUx4uA$ud54QeumZE9OD72BRSs5yQ"),
        ("long-hash-p4", "$argon2id$v=19$m=65536,t=1,p=4$xu4+XzM4fj0DqwsgCo7f5GYjNXFM9vlrDlXNWywTVDU$6TkcTLt2hVrEIDrquOOYKtDo7ghIyuK4lMcNaLM8to49siv43aKFb9qozixYIoXkshDhhddlzzpylmf1yXeAkw"),
    ]

    @Test(arguments: 0..<4)
    func verifiesOtherParameters(index: Int) throws {
        let c = Self.cases[index]
        #expect(try APIKeyHasher.verify(bytes(c.key), phc: c.hash))
        #expect(try !APIKeyHasher.verify(wrongKey(c.key), phc: c.hash))
        #expect(try PHCString(parsing: c.hash).encoded == c.hash)
    }
}

@Suite("Hashing")
struct HashingTests {
    @Test func constantsMatchOpenViking() {
        #expect(APIKeyHasher.memoryKiB == 65536)
        #expect(APIKeyHasher.iterations == 3)
        #expect(APIKeyHasher.parallelism == 2)
        #expect(APIKeyHasher.saltLength == 16)
        #expect(APIKeyHasher.hashLength == 32)
    }

    @Test func roundTrip() throws {
        let key = bytes("sk-roundtrip-\(UUID().uuidString)")
        let phc = try APIKeyHasher.hash(key)
        #expect(phc.wholeMatch(of: openVikingShape) != nil, "unexpected shape: \(phc)")
        #expect(APIKeyHasher.isHash(phc))
        #expect(try APIKeyHasher.verify(key, phc: phc))
        #expect(try !APIKeyHasher.verify(key + [0], phc: phc))
        #expect(try !APIKeyHasher.verify([], phc: phc))
    }

    @Test func emptyKeyRoundTrip() throws {
        let phc = try APIKeyHasher.hash([])
        #expect(try APIKeyHasher.verify([], phc: phc))
        #expect(try !APIKeyHasher.verify([0], phc: phc))
    }

    @Test func sameKeyHashesDifferently() throws {
        let key = bytes("same-key")
        let a = try APIKeyHasher.hash(key)
        let b = try APIKeyHasher.hash(key)
        #expect(a != b)
        #expect(try PHCString(parsing: a).salt != PHCString(parsing: b).salt)
        #expect(try APIKeyHasher.verify(key, phc: a))
        #expect(try APIKeyHasher.verify(key, phc: b))
    }

    @Test func keyPrefix() {
        #expect(APIKeyHasher.keyPrefix("sk-live-0123456789abcdef") == "sk-live-")
        #expect(APIKeyHasher.keyPrefix("35d2d31f6120e5432e3cac7cbc88ae11") == "35d2d31f")
        #expect(APIKeyHasher.keyPrefix("short") == "short")
        #expect(APIKeyHasher.keyPrefix("") == "")
        // Python's key[:8] counts code points: "ü" precomposed is one, "e\u{301}" is two.
        #expect(APIKeyHasher.keyPrefix("ünïcødé-key") == "ünïcødé-")
        #expect(APIKeyHasher.keyPrefix("e\u{301}e\u{301}e\u{301}e\u{301}e\u{301}").unicodeScalars.count == 8)
    }

    @Test func isHashRejectsPlaintextAndOtherSchemes() {
        #expect(!APIKeyHasher.isHash("sk-live-0123456789abcdef"))
        #expect(!APIKeyHasher.isHash(""))
        #expect(!APIKeyHasher.isHash("$argon2id$"))
        #expect(!APIKeyHasher.isHash("$argon2i$v=19$m=65536,t=3,p=2$3tcZ/k71xlj9fzFNT90hNA$nuxEmk7JhmMF8FR4DkCQ5w9s/X+8ua/vbFW3FE96/uE"))
        #expect(!APIKeyHasher.isHash("$2b$12$abcdefghijklmnopqrstuu"))
    }
}

@Suite("Malformed PHC strings")
struct MalformedTests {
    static let good = "$argon2id$v=19$m=65536,t=3,p=2$3tcZ/k71xlj9fzFNT90hNA$nuxEmk7JhmMF8FR4DkCQ5w9s/X+8ua/vbFW3FE96/uE"
    static let salt = "3tcZ/k71xlj9fzFNT90hNA"
    static let hash = "nuxEmk7JhmMF8FR4DkCQ5w9s/X+8ua/vbFW3FE96/uE"

    /// Each malformed string, the error it must raise, and a phrase its message must contain.
    static let cases: [(phc: String, error: APIKeyError, phrase: String)] = [
        ("", .malformed("empty string"), "empty"),
        ("argon2id$v=19$m=65536,t=3,p=2$\(salt)$\(hash)", .malformed("does not start with '$'"), "start"),
        ("$argon2i$v=19$m=65536,t=3,p=2$\(salt)$\(hash)", .unsupportedVariant("argon2i"), "only argon2id"),
        ("$argon2d$v=19$m=65536,t=3,p=2$\(salt)$\(hash)", .unsupportedVariant("argon2d"), "only argon2id"),
        ("$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E", .unsupportedVariant("scrypt"), "argon2id"),
        ("$$v=19$m=65536,t=3,p=2$\(salt)$\(hash)", .missingField("algorithm name"), "missing algorithm"),
        ("$argon2id", .missingField("version (v=19)"), "missing version"),
        ("$argon2id$m=65536,t=3,p=2$\(salt)$\(hash)", .unsupportedVersion("none (Argon2 1.0, 0x10)"), "v=19"),
        ("$argon2id$v=16$m=65536,t=3,p=2$\(salt)$\(hash)", .unsupportedVersion("16"), "only v=19"),
        ("$argon2id$v=x$m=65536,t=3,p=2$\(salt)$\(hash)", .invalidParameter(name: "v", value: "x"), "v='x'"),
        ("$argon2id$v=19", .missingField("parameters (m=,t=,p=)"), "missing parameters"),
        ("$argon2id$v=19$$\(salt)$\(hash)", .missingField("parameters (m=,t=,p=)"), "missing parameters"),
        ("$argon2id$v=19$m=65536,t=3$\(salt)$\(hash)", .missingField("parameter p"), "missing parameter p"),
        ("$argon2id$v=19$t=3,m=65536,p=2$\(salt)$\(hash)", .malformed("expected parameter m= at position 1 of m=,t=,p=, found 't=3'"), "expected parameter m="),
        ("$argon2id$v=19$m=65536,t=3,p=2,keyid=abc$\(salt)$\(hash)", .malformed("unsupported extra parameter 'keyid=abc' (only m, t, p are accepted)"), "keyid"),
        ("$argon2id$v=19$m=-1,t=3,p=2$\(salt)$\(hash)", .invalidParameter(name: "m", value: "-1"), "m='-1'"),
        ("$argon2id$v=19$m=065536,t=3,p=2$\(salt)$\(hash)", .invalidParameter(name: "m", value: "065536"), "decimal"),
        ("$argon2id$v=19$m=,t=3,p=2$\(salt)$\(hash)", .invalidParameter(name: "m", value: ""), "m=''"),
        ("$argon2id$v=19$m=4294967296,t=3,p=2$\(salt)$\(hash)", .parameterOutOfRange(name: "memory m (KiB)", value: "4294967296", allowed: 8...1_048_576), "out of the accepted range"),
        ("$argon2id$v=19$m=99999999999999999999999999,t=3,p=2$\(salt)$\(hash)", .parameterOutOfRange(name: "memory m (KiB)", value: "99999999999999999999999999", allowed: 8...1_048_576), "out of the accepted range"),
        ("$argon2id$v=19$m=4194304,t=3,p=2$\(salt)$\(hash)", .parameterOutOfRange(name: "memory m (KiB)", value: "4194304", allowed: 8...1_048_576), "memory m (KiB) = 4194304"),
        ("$argon2id$v=19$m=65536,t=0,p=2$\(salt)$\(hash)", .parameterOutOfRange(name: "iterations t", value: "0", allowed: 1...32), "iterations t = 0"),
        ("$argon2id$v=19$m=65536,t=100000,p=2$\(salt)$\(hash)", .parameterOutOfRange(name: "iterations t", value: "100000", allowed: 1...32), "iterations"),
        ("$argon2id$v=19$m=65536,t=3,p=0$\(salt)$\(hash)", .parameterOutOfRange(name: "parallelism p", value: "0", allowed: 1...64), "parallelism"),
        ("$argon2id$v=19$m=65536,t=3,p=16777215$\(salt)$\(hash)", .parameterOutOfRange(name: "parallelism p", value: "16777215", allowed: 1...64), "parallelism"),
        ("$argon2id$v=19$m=16,t=3,p=4$\(salt)$\(hash)", .parameterOutOfRange(name: "memory m (KiB; at least 8 per lane with p=4)", value: "16", allowed: 32...1_048_576), "per lane"),
        ("$argon2id$v=19$m=65536,t=3,p=2", .missingField("salt"), "missing salt"),
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)", .missingField("hash"), "missing hash"),
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)$", .missingField("hash"), "missing hash"),
        ("$argon2id$v=19$m=65536,t=3,p=2$$\(hash)", .missingField("salt"), "missing salt"),
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)$\(hash)$extra", .malformed("unexpected '$' after the hash"), "after the hash"),
        ("$argon2id$v=19$m=65536,t=3,p=2$3tcZ/k71xlj9fzFNT90h!A$\(hash)", .invalidBase64(field: "salt"), "salt is not valid"),
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)$nuxEmk7JhmMF8FR4DkCQ5w9s/X+8ua/vbFW3FE96/u", .invalidBase64(field: "hash"), "hash is not valid"),  // non-zero trailing bits
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)$nuxEmk7JhmMF8FR4DkCQ5w9s-X+8ua_vbFW3FE96/uE", .invalidBase64(field: "hash"), "base64"),  // URL-safe alphabet
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)$n", .invalidBase64(field: "hash"), "base64"),  // impossible length
        ("$argon2id$v=19$m=65536,t=3,p=2$AAAA$\(hash)", .parameterOutOfRange(name: "salt length (bytes)", value: "3", allowed: 8...64), "salt length"),
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)$AAAA", .parameterOutOfRange(name: "hash length (bytes)", value: "3", allowed: 4...64), "hash length"),
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)$\(String(repeating: "A", count: 400))", .parameterOutOfRange(name: "hash length (bytes)", value: "300", allowed: 4...64), "hash length"),  // within the string limit
        ("$argon2id$v=19$m=65536,t=3,p=2$\(salt)$\(String(repeating: "A", count: 600))", .malformed("654 bytes long, longer than the 512 accepted"), "longer than"),
    ]

    @Test(arguments: 0..<cases.count)
    func rejects(index: Int) throws {
        let c = Self.cases[index]
        do {
            _ = try PHCString(parsing: c.phc)
            Issue.record("parsed a malformed PHC string: \(c.phc)")
        } catch let error as APIKeyError {
            #expect(error == c.error, "for \(c.phc)")
            #expect(error.description.contains(c.phrase), "message '\(error.description)' lacks '\(c.phrase)'")
        }
        // verify throws the same way (rather than returning false) and isHash says no.
        #expect(throws: APIKeyError.self) { try APIKeyHasher.verify(bytes("k"), phc: c.phc) }
        #expect(!APIKeyHasher.isHash(c.phc))
    }

    @Test func goodStringStillParses() throws {
        #expect(try PHCString(parsing: Self.good).encoded == Self.good)
    }

    @Test func acceptsPaddedBase64() throws {
        let padded = "$argon2id$v=19$m=65536,t=3,p=2$\(Self.salt)==$\(Self.hash)="
        let phc = try PHCString(parsing: padded)
        #expect(phc.encoded == Self.good)
        #expect(try APIKeyHasher.verify(bytes("sk-live-0123456789abcdef"), phc: padded))
    }

    @Test func memberwiseInitChecks() throws {
        #expect(throws: APIKeyError.unsupportedVariant("argon2i")) {
            try PHCString(variant: "argon2i", m: 65536, t: 3, p: 2, salt: [UInt8](repeating: 1, count: 16), hash: [UInt8](repeating: 2, count: 32))
        }
        #expect(throws: APIKeyError.self) {
            try PHCString(m: 1 << 30, t: 3, p: 2, salt: [UInt8](repeating: 1, count: 16), hash: [UInt8](repeating: 2, count: 32))
        }
        let phc = try PHCString(m: 65536, t: 3, p: 2, salt: [UInt8](repeating: 0, count: 16), hash: [UInt8](repeating: 0xff, count: 32))
        #expect(phc.encoded == "$argon2id$v=19$m=65536,t=3,p=2$AAAAAAAAAAAAAAAAAAAAAA$//////////////////////////////////////////8")
    }
}

@Suite("Base64")
struct Base64Tests {
    @Test func rfc4648VectorsWithoutPadding() {
        let vectors = ["": "", "f": "Zg", "fo": "Zm8", "foo": "Zm9v", "foob": "Zm9vYg", "fooba": "Zm9vYmE", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(PHCBase64.encode(bytes(plain)) == encoded)
            #expect(PHCBase64.decode(bytes(encoded)) == bytes(plain))
        }
        #expect(PHCBase64.decode(bytes("Zg==")) == bytes("f"))
        #expect(PHCBase64.decode(bytes("Zm8=")) == bytes("fo"))
        #expect(PHCBase64.decode(bytes("Zg=")) == nil)
        #expect(PHCBase64.decode(bytes("Zm9v=")) == nil)
        #expect(PHCBase64.decode(bytes("Zh")) == nil)      // non-zero unused bits
        #expect(PHCBase64.decode(bytes("Z")) == nil)
        #expect(PHCBase64.decode(bytes("Zm 9")) == nil)
    }

    @Test func allByteValuesRoundTrip() {
        for n in 0..<70 {
            let data = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ n) }
            #expect(PHCBase64.decode(bytes(PHCBase64.encode(data))) == data)
        }
        let all = (0...255).map { UInt8($0) }
        #expect(PHCBase64.decode(bytes(PHCBase64.encode(all))) == all)
    }
}
