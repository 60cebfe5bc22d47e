import Testing
@testable import VikingCrypto

private func hex(_ s: String) -> [UInt8] { Hex.decode(s) ?? [] }

@Suite("AES-256-GCM")
struct AESGCMTests {
    // The GCM specification's test cases 13 and 14 (AES-256, zero key and IV).
    @Test func gcmSpecCase13EmptyPlaintext() throws {
        let key = SecureBytes(count: 32)
        let sealed = try [UInt8]().withUnsafeBytes { try AESGCM.seal(key: key, nonce: [UInt8](repeating: 0, count: 12), plaintext: $0) }
        #expect(Hex.encode(sealed) == "530f8afbc74536b9a963b4f1c4cb738b")
    }

    @Test func gcmSpecCase14() throws {
        let key = SecureBytes(count: 32)
        let plaintext = [UInt8](repeating: 0, count: 16)
        let sealed = try plaintext.withUnsafeBytes { try AESGCM.seal(key: key, nonce: [UInt8](repeating: 0, count: 12), plaintext: $0) }
        #expect(Hex.encode(sealed) == "cea7403d4d606b6e074ec5d3baf39d18" + "d0d1c8a799996bf0265b98b5d48ab919")
    }

    @Test func roundTripWithAADAndTamperDetection() throws {
        let key = try SecureBytes.random(count: 32)
        let nonce = try SecureRandom.bytes(12)
        let message = Array("attack at dawn".utf8)
        let aad = Array("context".utf8)
        let sealed = try message.withUnsafeBytes { try AESGCM.seal(key: key, nonce: nonce, aad: aad, plaintext: $0) }
        let opened = try AESGCM.openKey(key: key, nonce: nonce, aad: aad, sealed: sealed)
        #expect(opened.withUnsafeBytes { Array($0) } == message)
        var tampered = sealed
        tampered[3] ^= 1
        #expect(throws: CryptoError.authenticationFailed) { try AESGCM.openKey(key: key, nonce: nonce, aad: aad, sealed: tampered) }
        #expect(throws: CryptoError.authenticationFailed) { try AESGCM.openKey(key: key, nonce: nonce, aad: [1], sealed: sealed) }
    }

    @Test func failedOpenLeavesNoPlaintextInOutput() throws {
        let key = try SecureBytes.random(count: 32)
        let nonce = [UInt8](repeating: 7, count: 12)
        let message = [UInt8](repeating: 0x41, count: 64)
        var sealed = try message.withUnsafeBytes { try AESGCM.seal(key: key, nonce: nonce, plaintext: $0) }
        sealed[sealed.count - 1] ^= 0x80
        var output = [UInt8](repeating: 0xee, count: 64)
        #expect(throws: CryptoError.authenticationFailed) {
            try nonce.withUnsafeBytes { n in
                try sealed.withUnsafeBytes { s in
                    try output.withUnsafeMutableBytes { o in try AESGCM.open(key: key, nonce: n, sealed: s, output: o) }
                }
            }
        }
        #expect(!output.contains(0x41))
    }

    @Test func rejectsWrongKeyAndNonceLengths() {
        let short = SecureBytes(count: 16)
        #expect(throws: CryptoError.invalidKeyLength(expected: 32, actual: 16)) {
            try [UInt8]().withUnsafeBytes { try AESGCM.seal(key: short, nonce: [UInt8](repeating: 0, count: 12), plaintext: $0) }
        }
        #expect(throws: CryptoError.invalidNonceLength(expected: 12, actual: 8)) {
            try [UInt8]().withUnsafeBytes { try AESGCM.seal(key: SecureBytes(count: 32), nonce: [UInt8](repeating: 0, count: 8), plaintext: $0) }
        }
    }

    @Test func keysSwitchWithinOneThread() throws {
        // The per-thread context re-keys when the key changes; alternate keys must not bleed into each other.
        let a = try SecureBytes.random(count: 32), b = try SecureBytes.random(count: 32)
        let nonce = [UInt8](repeating: 1, count: 12)
        let m = Array("same message".utf8)
        let sa = try m.withUnsafeBytes { try AESGCM.seal(key: a, nonce: nonce, plaintext: $0) }
        let sb = try m.withUnsafeBytes { try AESGCM.seal(key: b, nonce: nonce, plaintext: $0) }
        #expect(sa != sb)
        #expect(try AESGCM.openKey(key: a, nonce: nonce, sealed: sa).withUnsafeBytes { Array($0) } == m)
        #expect(throws: CryptoError.authenticationFailed) { try AESGCM.openKey(key: b, nonce: nonce, sealed: sa) }
    }
}

@Suite("HKDF-SHA256")
struct HKDFTests {
    @Test func rfc5869Case1() throws {
        let okm = try HKDF.sha256(ikm: SecureBytes(copying: [UInt8](repeating: 0x0b, count: 22)),
                                  salt: hex("000102030405060708090a0b0c"), info: hex("f0f1f2f3f4f5f6f7f8f9"), length: 42)
        #expect(okm.withUnsafeBytes { Hex.encode($0) } ==
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    }

    // DESIGN section 3: OpenViking's account keys for root key 0x00..0x1f.
    @Test(arguments: [
        ("tenant-7", "a5447823b691e80727c6bf913bd3ac051f32c36ad387f39bf062f81c68307ae4"),
        ("_system", "def12f82177679c33a9a7a92bcb55e4da48aae2124c1cf05b636f1beafeb5a8e"),
        ("acme", "64112c9ce7c7fd9ce3881cef6b7732ea022069fcc415e3a46e0d447ef2ea49f7"),
    ])
    func openVikingAccountKeys(account: String, expected: String) throws {
        let root = SecureBytes(copying: (0..<32).map { UInt8($0) })
        let key = try HKDF.sha256(ikm: root, salt: Array("openviking-kek-salt-v1".utf8),
                                  info: Array("openviking:kek:v1:\(account)".utf8), length: 32)
        #expect(key.withUnsafeBytes { Hex.encode($0) } == expected)
    }

    @Test func emptySaltAndInfoAreAccepted() throws {
        let key = try HKDF.sha256(ikm: SecureBytes(copying: [1, 2, 3]), salt: [], info: [], length: 8)
        #expect(key.count == 8)
    }
}

@Suite("Helpers")
struct HelperTests {
    @Test func hexRoundTripAndRejects() {
        #expect(Hex.decode("00ffA0") == [0, 255, 160])
        #expect(Hex.decode("abc") == nil)
        #expect(Hex.decode("zz") == nil)
        #expect(Hex.encode([0xde, 0xad]) == "dead")
    }

    @Test func constantTimeEquals() {
        #expect(ConstantTime.equals([1, 2, 3], [1, 2, 3]))
        #expect(!ConstantTime.equals([1, 2, 3], [1, 2, 4]))
        #expect(!ConstantTime.equals([1, 2], [1, 2, 3]))
    }

    @Test func sha256KnownAnswer() {
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}

@Suite("SecureBytes memory")
struct SecureBytesMemoryTests {
    /// Keys share locked slots that are reused: a reused slot must come back wiped, and live keys must never overlap.
    @Test func slotsComeBackWipedAndNeverOverlap() {
        var live: [SecureBytes] = []
        for round in 0..<3 {
            for _ in 0..<3000 {
                let key = SecureBytes(count: 32)
                let clean = key.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }
                #expect(clean, "round \(round): a key buffer was not zero when handed out")
                key.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: 0xA5) }
                live.append(key)
            }
            let addresses = Set(live.map { k in k.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) } })
            #expect(addresses.count == live.count, "two live keys share memory")
            live.removeAll()
        }
    }

    @Test func largerSecretsKeepTheirBytes() {
        let big = SecureBytes(copying: (0..<5000).map { UInt8(truncatingIfNeeded: $0) })
        #expect(big.count == 5000)
        #expect(big.withUnsafeBytes { Array($0) } == (0..<5000).map { UInt8(truncatingIfNeeded: $0) })
        let edge = SecureBytes(copying: [UInt8](repeating: 7, count: 64))
        let past = SecureBytes(copying: [UInt8](repeating: 9, count: 65))
        #expect(edge.withUnsafeBytes { $0.allSatisfy { $0 == 7 } } && past.withUnsafeBytes { $0.allSatisfy { $0 == 9 } })
    }
}

#if canImport(Glibc)
import Glibc
#endif

@Suite("Random bytes for nonces")
struct PublicRandomTests {
    private func take(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try SecureRandom.fillPublic($0) }
        return out
    }

    /// 12-byte nonces across several refills of the thread's 4 KiB buffer, and sizes that straddle its end:
    /// no value comes out twice and none is left zero.
    @Test func neverRepeatsAcrossRefills() throws {
        var seen = Set<[UInt8]>()
        for _ in 0..<2_000 { seen.insert(try take(12)) }
        #expect(seen.count == 2_000)
        for size in [1, 13, 1000, 1024, 1025, 5000] {
            let a = try take(size), b = try take(size)
            #expect(a != b && a.count == size)
            if size >= 16 { #expect(!a.allSatisfy { $0 == 0 }) }
        }
    }

    /// A forked child must not hand out the bytes its parent is about to use: the buffer is refilled there.
    @Test func forkedChildDrawsItsOwnBytes() throws {
        _ = try take(12)   // the buffer is now filled, with 4 KiB - 12 bytes left
        var pipeFDs: [Int32] = [0, 0]
        #expect(pipe(&pipeFDs) == 0)
        let child = fork()
        if child == 0 {
            var bytes = [UInt8](repeating: 0, count: 32)
            let ok = bytes.withUnsafeMutableBytes { (try? SecureRandom.fillPublic($0)) != nil }
            if ok { _ = bytes.withUnsafeBytes { write(pipeFDs[1], $0.baseAddress, 32) } }
            _exit(ok ? 0 : 1)
        }
        close(pipeFDs[1])
        var fromChild = [UInt8](repeating: 0, count: 32)
        let got = fromChild.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, 32) }
        close(pipeFDs[0])
        var status: Int32 = 0
        waitpid(child, &status, 0)
        let mine = try take(32)
        #expect(got == 32)
        #expect(fromChild != mine)
    }
}
