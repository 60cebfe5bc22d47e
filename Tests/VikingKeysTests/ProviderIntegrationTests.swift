import Foundation
import Testing
import VikingCrypto
@testable import VikingKeys

// Provider tests against real servers. Tests/integration/providers.sh starts them (OpenBao dev servers, plain and
// TLS, and the SDK-checked KMS stand-in), exports the VIKINGFS_* variables below and runs
// `swift test --filter 'VaultTests|VaultGoneTests|VolcengineKMSTests'`; it fails when that run executed no test,
// so these never pass silently by being skipped in CI.

private func writeToken(_ token: String, in dir: String) -> String {
    let path = dir + "/vault-token"
    writeFile(path, token + "\n")
    return path
}

/// Writes a result line for providers.sh to cross-check with plain HTTP calls.
private func report(_ name: String, _ line: String) {
    guard let out = env("VIKINGFS_TEST_OUT") else { return }
    writeFile(out + "/" + name, line + "\n", mode: 0o644)
}

private struct VaultAdmin {
    let client: HTTPClient
    let token: String

    init(address: String, token: String) {
        client = HTTPClient(endpoint: RemoteEndpoint(parsing: address)!, caFile: nil, timeout: 10)
        self.token = token
    }

    func call(_ method: String, _ path: String, _ body: String = "") throws -> HTTPResponse {
        try client.send(method: method, path: path, headers: [("X-Vault-Token", token)], body: Array(body.utf8))
    }

    func waitUntilActive() throws {
        for _ in 0..<100 {
            if let r = try? call("GET", "/v1/sys/health"), r.status == 200 { return }
            usleep(100_000)
        }
        Issue.record("Vault did not become active after unsealing")
    }
}

@Suite(.serialized, .enabled(if: env("VIKINGFS_VAULT_ADDR") != nil, "needs a Vault/OpenBao server: run Tests/integration/providers.sh"))
struct VaultTests {
    let address = env("VIKINGFS_VAULT_ADDR") ?? ""
    let rootToken = env("VIKINGFS_VAULT_TOKEN") ?? ""
    let run = env("VIKINGFS_VAULT_RUN") ?? String(getpid())
    let kv1 = env("VIKINGFS_VAULT_KV1_MOUNT") ?? "kv1"
    let kv2 = env("VIKINGFS_VAULT_KV2_MOUNT") ?? "secret"

    func provider(_ dir: String, token: String? = nil, _ extra: [String: String]) throws -> VaultProvider {
        var options = ["key_provider": "vault", "vault_addr": address, "vault_token_file": writeToken(token ?? rootToken, in: dir)]
        options.merge(extra) { $1 }
        return try #require(try KeySource.parse(options).provider as? VaultProvider)
    }

    @Test func createThenLoadKV2() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let path = "vikingfs-\(run)/created-v2"
        let p = try provider(dir, ["vault_kv_mount": kv2, "vault_kv_version": "2", "vault_kv_path": path])
        let created = try p.createRootKey()
        let loaded = try p.loadRootKey()
        #expect(loaded.bytes.constantTimeEquals(created.bytes))
        // A second KeySource (as a mount would build) loads the same key.
        let again = try KeySource.parse(["key_provider": "vault", "vault_addr": address, "vault_token_file": dir + "/vault-token",
                                         "vault_kv_mount": kv2, "vault_kv_path": path]).loadKeyRing()
        #expect(again.primary.keyID == created.keyID && again.providerKind == .vault)
        let refusal = keyError { _ = try p.createRootKey() }
        guard case .alreadyExists(let what)? = refusal else { Issue.record("second create must refuse: \(String(describing: refusal))"); return }
        print("vault create twice: \(refusal!.description)")
        #expect(what.contains(path))
        #expect(try p.loadRootKey().keyID == created.keyID, "the refused create left the key alone")
        report("vault-created-v2", "2 \(kv2) \(path) \(created.keyIDHex)")
    }

    @Test func createThenLoadKV1() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let path = "vikingfs-\(run)/created-v1"
        let p = try provider(dir, ["vault_kv_mount": kv1, "vault_kv_version": "1", "vault_kv_path": path])
        let created = try p.createRootKey()
        #expect(try p.loadRootKey().keyID == created.keyID)
        guard case .alreadyExists? = keyError({ _ = try p.createRootKey() }) else { Issue.record("second create must refuse"); return }
        report("vault-created-v1", "1 \(kv1) \(path) \(created.keyIDHex)")
    }

    /// A key stored with plain HTTP calls in OpenViking's layout by providers.sh (curl), read by vikingfs.
    @Test(arguments: [1, 2])
    func loadsOpenVikingLayout(kvVersion: Int) throws {
        let expected = try #require(env("VIKINGFS_OV_KEY_HEX"), "providers.sh stores the OpenViking-layout key")
        let dir = makeTempDir(); defer { removeTree(dir) }
        let p = try provider(dir, ["vault_kv_mount": kvVersion == 1 ? kv1 : kv2, "vault_kv_version": String(kvVersion),
                                   "vault_kv_path": "openviking-\(run)/openviking-encrypted-root-key"])
        let key = try p.loadRootKey()
        #expect(Hex.encode(key.bytes.withUnsafeBytes { Array($0) }) == expected)
    }

    /// The same key through an ov.conf as OpenViking would read it (its defaults: KV v1, mount "secret").
    @Test func loadsThroughOVConf() throws {
        let expected = try #require(env("VIKINGFS_OV_KEY_HEX"))
        let dir = makeTempDir(); defer { removeTree(dir) }
        writeFile(dir + "/ov.conf", """
        {"server": {"port": 1933},
         "encryption": {"enabled": true, "provider": "vault",
           "vault": {"address": "\(address)", "token": "\(rootToken)", "kv_mount_point": "\(kv1)",
                     "encrypted_root_key_key": "openviking-\(run)/openviking-encrypted-root-key"}}}
        """)
        let ring = try KeySource.parse(["config": dir + "/ov.conf"]).loadKeyRing()
        #expect(Hex.encode(ring.primary.bytes.withUnsafeBytes { Array($0) }) == expected)
    }

    @Test func wrongTokenFailsClearly() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let p = try provider(dir, token: "s.definitely-not-a-token", ["vault_kv_mount": kv2, "vault_kv_path": "vikingfs-\(run)/created-v2"])
        let load = keyErrorMessage { _ = try p.loadRootKey() } ?? "no error"
        print("vault wrong token (load): \(load)")
        #expect(load.contains("HTTP 403") && load.contains("token"), "\(load)")
        let fresh = try provider(dir, token: "s.definitely-not-a-token", ["vault_kv_mount": kv2, "vault_kv_path": "vikingfs-\(run)/wrong-token"])
        let create = keyErrorMessage { _ = try fresh.createRootKey() } ?? "no error"
        print("vault wrong token (create): \(create)")
        #expect(create.contains("HTTP 403"))
        let admin = VaultAdmin(address: address, token: rootToken)
        #expect(try admin.call("GET", "/v1/\(kv2)/data/vikingfs-\(run)/wrong-token").status == 404, "nothing was written")
    }

    @Test func missingKeyAndMismatchedVersionFailClearly() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let missing = keyErrorMessage {
            _ = try provider(dir, ["vault_kv_mount": kv2, "vault_kv_path": "vikingfs-\(run)/never-created"]).loadRootKey()
        } ?? ""
        print("vault no key stored: \(missing)")
        #expect(missing.contains("no root key is stored") && missing.contains("vikingfs init-key --provider vault"), "\(missing)")
        let mismatch = keyErrorMessage {
            _ = try provider(dir, ["vault_kv_mount": kv2, "vault_kv_version": "1", "vault_kv_path": "vikingfs-\(run)/created-v2"]).loadRootKey()
        } ?? ""
        print("vault KV version mismatch: \(mismatch)")
        #expect(mismatch.contains("vault_kv_version=2"), "\(mismatch)")
        let wrongTransit = keyErrorMessage {
            _ = try provider(dir, ["vault_kv_mount": kv2, "vault_kv_path": "vikingfs-\(run)/created-v2",
                                   "vault_transit_key": "no-such-key-\(run)"]).loadRootKey()
        } ?? ""
        print("vault wrong transit key: \(wrongTransit)")
        #expect(wrongTransit.contains("does not exist"), "\(wrongTransit)")
        let admin = VaultAdmin(address: address, token: rootToken)
        #expect(try admin.call("GET", "/v1/transit/keys/no-such-key-\(run)").status == 404, "a load never creates a Transit key")
    }

    @Test func sealedVaultFailsAndNothingIsWritten() throws {
        let unsealKey = try #require(env("VIKINGFS_VAULT_UNSEAL_KEY"), "providers.sh passes the dev server's unseal key")
        let dir = makeTempDir(); defer { removeTree(dir) }
        let existing = try provider(dir, ["vault_kv_mount": kv1, "vault_kv_version": "1", "vault_kv_path": "openviking-\(run)/openviking-encrypted-root-key"])
        let freshPath = "vikingfs-\(run)/while-sealed"
        let freshTransit = "sealed-transit-\(run)"
        let fresh = try provider(dir, ["vault_kv_mount": kv2, "vault_kv_path": freshPath, "vault_transit_key": freshTransit])
        let admin = VaultAdmin(address: address, token: rootToken)
        #expect(try admin.call("PUT", "/v1/sys/seal").status == 204)
        var unsealed = false
        defer {
            if !unsealed { _ = try? admin.call("PUT", "/v1/sys/unseal", #"{"key":"\#(unsealKey)"}"#); try? admin.waitUntilActive() }
        }
        let start = Date()
        let load = keyErrorMessage { _ = try existing.loadRootKey() } ?? "no error"
        print("vault sealed (load): \(load)")
        #expect(load.contains("is sealed") && load.contains("HTTP 503"), "\(load)")
        #expect(Date().timeIntervalSince(start) < 5, "a sealed Vault is not retried")
        let create = keyErrorMessage { _ = try fresh.createRootKey() } ?? "no error"
        print("vault sealed (create): \(create)")
        #expect(create.contains("is sealed"), "\(create)")
        _ = try admin.call("PUT", "/v1/sys/unseal", #"{"key":"\#(unsealKey)"}"#)
        try admin.waitUntilActive()
        unsealed = true
        #expect(try admin.call("GET", "/v1/\(kv2)/data/\(freshPath)").status == 404, "no KV entry was written while sealed")
        #expect(try admin.call("GET", "/v1/transit/keys/\(freshTransit)").status == 404, "no Transit key was created while sealed")
        #expect(throws: Never.self) { _ = try existing.loadRootKey() }
    }

    @Test(.enabled(if: env("VIKINGFS_VAULT_TLS_ADDR") != nil))
    func tlsWithCAFile() throws {
        let tlsAddress = try #require(env("VIKINGFS_VAULT_TLS_ADDR"))
        let ca = try #require(env("VIKINGFS_VAULT_TLS_CACERT"))
        let dir = makeTempDir(); defer { removeTree(dir) }
        var options = ["key_provider": "vault", "vault_addr": tlsAddress,
                       "vault_token_file": writeToken(env("VIKINGFS_VAULT_TLS_TOKEN") ?? rootToken, in: dir),
                       "vault_kv_path": "vikingfs-\(run)/tls"]
        let untrusted = keyErrorMessage { _ = try KeySource.parse(options).provider.loadRootKey() } ?? "no error"
        print("vault TLS without its CA: \(untrusted)")
        #expect(untrusted.contains("not trusted"), "\(untrusted)")
        options["vault_cacert"] = ca
        let p = try KeySource.parse(options).provider
        let created = try p.createRootKey()
        #expect(try p.loadRootKey().keyID == created.keyID)
    }
}

@Suite(.enabled(if: env("VIKINGFS_VAULT_GONE_ADDR") != nil, "providers.sh runs this after stopping its Vault"))
struct VaultGoneTests {
    @Test func stoppedServerFailsClearly() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let address = env("VIKINGFS_VAULT_GONE_ADDR")!
        let p = try KeySource.parse(["key_provider": "vault", "vault_addr": address,
                                     "vault_token_file": writeToken("s.whatever", in: dir), "vault_timeout": "2"]).provider
        let load = keyErrorMessage { _ = try p.loadRootKey() } ?? "no error"
        print("vault gone (load): \(load)")
        #expect(load.contains("unreachable") && load.contains(address), "\(load)")
        let create = keyErrorMessage { _ = try p.createRootKey() } ?? "no error"
        print("vault gone (create): \(create)")
        #expect(create.contains("unreachable"))
    }
}

@Suite(.enabled(if: env("VIKINGFS_KMS_ENDPOINT") != nil, "needs Tests/integration/kms_server.py: run Tests/integration/providers.sh"))
struct VolcengineKMSTests {
    let endpoint = env("VIKINGFS_KMS_ENDPOINT") ?? ""

    func provider(_ dir: String, keyID: String = "test-key", secret: String? = nil, timeout: String = "3") throws -> VolcengineKMSProvider {
        let secretKey = secret ?? (try? String(contentsOfFile: env("VIKINGFS_KMS_SECRET_KEY_FILE") ?? "", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        writeFile(dir + "/creds", "access_key = \(env("VIKINGFS_KMS_ACCESS_KEY") ?? "")\nsecret_key = \(secretKey)\n")
        return try #require(try KeySource.parse([
            "key_provider": "volcengine_kms", "volcengine_key_id": keyID, "volcengine_endpoint": endpoint,
            "volcengine_region": "cn-beijing", "volcengine_credentials_file": dir + "/creds",
            "volcengine_encrypted_key_file": dir + "/root.enc", "volcengine_timeout": timeout,
        ]).provider as? VolcengineKMSProvider)
    }

    @Test func createThenLoadWithSDKCheckedSignatures() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let p = try provider(dir)
        let created = try p.createRootKey()
        let ring = try KeySource(provider: p).loadKeyRing()
        #expect(ring.primary.keyID == created.keyID && ring.providerKind == .volcengineKMS)
        guard case .alreadyExists? = keyError({ _ = try p.createRootKey() }) else { Issue.record("second create must refuse"); return }
        var st = stat()
        #expect(stat(dir + "/root.enc", &st) == 0 && st.st_mode & 0o777 == 0o600)
    }

    @Test func retriesAServerError() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let p = try provider(dir, keyID: "flaky-key")
        let created = try p.createRootKey()
        #expect(try p.loadRootKey().keyID == created.keyID)
    }

    @Test func errorAnswerIsReported() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let disabled = keyErrorMessage { _ = try provider(dir, keyID: "error-key").createRootKey() } ?? "no error"
        print("kms error answer: \(disabled)")
        #expect(disabled.contains("KeyDisabled") && disabled.contains("RequestId"), "\(disabled)")
        let unknown = keyErrorMessage { _ = try provider(dir, keyID: "no-such-key").createRootKey() } ?? "no error"
        print("kms unknown key: \(unknown)")
        #expect(unknown.contains("KeyNotFound") && unknown.contains("volcengine_key_id"), "\(unknown)")
        let badSecret = keyErrorMessage { _ = try provider(dir, secret: "not-the-secret").createRootKey() } ?? "no error"
        print("kms wrong secret key: \(badSecret)")
        #expect(badSecret.contains("SignatureDoesNotMatch"), "\(badSecret)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/root.enc"), "failed creates write nothing")
    }

    @Test func timeoutIsReported() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        var s = try provider(dir, keyID: "slow-key", timeout: "1").settings
        s.attempts = 1
        let start = Date()
        let message = keyErrorMessage { _ = try VolcengineKMSProvider(settings: s).createRootKey() } ?? "no error"
        print("kms timeout: \(message)")
        #expect(message.contains("did not answer in time"), "\(message)")
        #expect(Date().timeIntervalSince(start) < 3)
    }
}
