import Foundation
import Testing
import VikingCrypto
@testable import VikingKeys
import VikingJSON

/// Vault failure handling against loopback stand-ins: retries, sealed, forbidden, unreachable, timeouts.
/// (The real OpenBao server is exercised by VaultTests, which Tests/integration/providers.sh runs.)
@Suite struct VaultFailureTests {
    func settings(_ address: String, token dir: String, timeout: Double = 5, extra: [String: String] = [:]) throws -> VaultSettings {
        writeFile(dir + "/token", "test-token\n")
        var options = ["key_provider": "vault", "vault_addr": address, "vault_token_file": dir + "/token",
                       "vault_timeout": String(timeout)]
        options.merge(extra) { $1 }
        return try #require(try KeySource.parse(options).provider as? VaultProvider).settings
    }

    @Test func sealedIsNotRetriedAndWritesNothing() throws {
        let server = TestHTTPServer { _ in .json(503, #"{"errors":["Vault is sealed"]}"#) }
        defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        let provider = VaultProvider(settings: try settings(server.address, token: dir))
        let load = keyErrorMessage { _ = try provider.loadRootKey() } ?? ""
        #expect(load.contains("is sealed") && load.contains("HTTP 503") && load.contains(server.address), "\(load)")
        #expect(server.requests.count == 1)
        let create = keyErrorMessage { _ = try provider.createRootKey() } ?? ""
        #expect(create.contains("is sealed") && create.contains("cannot create"), "\(create)")
        #expect(server.requests.count == 2)
        #expect(server.requests.allSatisfy { $0.method == "GET" }, "nothing may be written to a sealed Vault")
    }

    @Test func serverErrorsAreRetriedThenReported() throws {
        let server = TestHTTPServer { _ in .json(500, #"{"errors":["internal error"]}"#) }
        defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        let provider = VaultProvider(settings: try settings(server.address, token: dir))
        let message = keyErrorMessage { _ = try provider.loadRootKey() } ?? ""
        #expect(message.contains("HTTP 500") && message.contains("internal error") && message.contains("after 3 attempts"), "\(message)")
        #expect(server.requests.count == 3)
    }

    @Test func forbiddenNamesTheToken() throws {
        let server = TestHTTPServer { _ in .json(403, #"{"errors":["permission denied"]}"#) }
        defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        let provider = VaultProvider(settings: try settings(server.address, token: dir))
        let message = keyErrorMessage { _ = try provider.loadRootKey() } ?? ""
        #expect(message.contains("refused the token (HTTP 403: permission denied)") && message.contains("secret/data/openviking-encrypted-root-key"), "\(message)")
        #expect(server.requests.count == 1)
        #expect(server.requests[0].header("X-Vault-Token") == "test-token")
    }

    @Test func unreachableNamesTheAddress() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        let address = "http://127.0.0.1:\(closedPort())"
        let provider = VaultProvider(settings: try settings(address, token: dir))
        let message = keyErrorMessage { _ = try provider.loadRootKey() } ?? ""
        print("vault unreachable: \(message)")
        #expect(message.contains("unreachable") && message.contains("Connection refused") && message.contains(address)
                && message.contains("tried 3 times"), "\(message)")
    }

    @Test func timeoutIsBounded() throws {
        let server = TestHTTPServer { _ in .hang(seconds: 3) }
        defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        var s = try settings(server.address, token: dir, timeout: 0.3)
        s.attempts = 2
        let start = Date()
        let message = keyErrorMessage { _ = try VaultProvider(settings: s).loadRootKey() } ?? ""
        let elapsed = Date().timeIntervalSince(start)
        #expect(message.contains("did not answer in time") && message.contains("vault_timeout=0.3"), "\(message)")
        #expect(elapsed < 2.5, "took \(elapsed) s")
        #expect(server.requests.count == 2)
    }

    @Test func loadsThroughChunkedAnswersWithNamespace() throws {
        let key = (0..<32).map { UInt8($0) }
        let stored = Base64.encodeString(Array("vault:v1:ZmFrZQ==".utf8))
        let server = TestHTTPServer { request in
            if request.method == "GET" && request.path == "/v1/secret/data/openviking-encrypted-root-key" {
                return .chunkedJSON(200, #"{"data":{"data":{"encrypted_root_key":"\#(stored)"},"metadata":{"version":1}}}"#)
            }
            if request.method == "POST" && request.path == "/v1/transit/decrypt/openviking-root-key" {
                let body = String(decoding: request.body, as: UTF8.self)
                guard body.contains("vault:v1:ZmFrZQ==") else { return .json(400, #"{"errors":["bad"]}"#) }
                return .chunkedJSON(200, #"{"data":{"plaintext":"\#(Base64.encodeString(key))"}}"#)
            }
            return .json(404, #"{"errors":[]}"#)
        }
        defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        let root = try VaultProvider(settings: try settings(server.address, token: dir, extra: ["vault_namespace": "team-a"])).loadRootKey()
        #expect(root.bytes.withUnsafeBytes { Array($0) } == key)
        #expect(server.requests.allSatisfy { $0.header("X-Vault-Namespace") == "team-a" })
    }

    @Test func missingEntryPointsToInitKey() throws {
        let server = TestHTTPServer { _ in .json(404, #"{"errors":[]}"#) }
        defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        let message = keyErrorMessage { _ = try VaultProvider(settings: try settings(server.address, token: dir)).loadRootKey() } ?? ""
        #expect(message.contains("no root key is stored") && message.contains("vikingfs init-key --provider vault"), "\(message)")
        #expect(!server.requests.contains { $0.method != "GET" }, "a load never writes")
    }

    @Test func tokenFileMustBePrivate() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        var s = try settings("http://127.0.0.1:\(closedPort())", token: dir)
        chmod(dir + "/token", 0o644)
        let message = keyErrorMessage { _ = try VaultProvider(settings: s).loadRootKey() } ?? ""
        #expect(message.contains("chmod 600"), "\(message)")
        s.token = .file(dir + "/missing")
        #expect((keyErrorMessage { _ = try VaultProvider(settings: s).loadRootKey() } ?? "").contains("No such file"))
        writeFile(dir + "/empty", "\n")
        s.token = .file(dir + "/empty")
        #expect((keyErrorMessage { _ = try VaultProvider(settings: s).loadRootKey() } ?? "").contains("empty"))
    }

    @Test func plainHTTPServerOnHTTPSAddress() throws {
        let server = TestHTTPServer { _ in .json(200, "{}") }
        defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        let message = keyErrorMessage {
            _ = try VaultProvider(settings: try settings("https://127.0.0.1:\(server.port)", token: dir, timeout: 1)).loadRootKey()
        } ?? ""
        print("vault https against plain http: \(message)")
        #expect(message.contains("TLS"), "\(message)")
    }
}

/// The KMS provider against a loopback stand-in that checks each request's signature and answers like KMS.
/// (Tests/integration/kms_server.py does the same with the official SDK's signer; VolcengineKMSTests uses it.)
@Suite struct VolcengineKMSOfflineTests {
    static let accessKey = "AKLTtest"
    static let secretKey = "c2VjcmV0LWtleS1mb3ItdGVzdHM="

    static func fakeKMS() -> TestHTTPServer {
        TestHTTPServer { request in
            let auth = request.header("Authorization") ?? ""
            let date = request.header("X-Date") ?? ""
            let credentials = VolcengineCredentials(accessKeyID: accessKey, secretAccessKey: SecureBytes(copying: Array(secretKey.utf8)))
            let unsigned = request.headers.filter { !["Authorization", "X-Date", "X-Content-Sha256", "Content-Length", "Connection"].contains($0.0) }
            let expected = VolcengineSigner(region: "cn-beijing", service: "kms").sign(
                method: request.method, path: request.path, query: request.query, headers: unsigned, body: request.body,
                date: date, credentials: credentials)
            let meta = #""RequestId":"req-1","Action":"x","Version":"2021-02-18","Service":"kms","Region":"cn-beijing""#
            guard expected.authorization == auth else {
                return .json(401, #"{"ResponseMetadata":{\#(meta),"Error":{"CodeN":100011,"Code":"SignatureDoesNotMatch","Message":"bad signature"}}}"#)
            }
            guard let doc = try? JSON.parse(request.body), let keyID = doc["KeyID"]?.stringValue else {
                return .json(400, #"{"ResponseMetadata":{\#(meta),"Error":{"Code":"InvalidParameter","Message":"no body"}}}"#)
            }
            if keyID == "error-key" {
                return .json(400, #"{"ResponseMetadata":{\#(meta),"Error":{"CodeN":100019,"Code":"KeyDisabled","Message":"the key is disabled"}}}"#)
            }
            let action = request.query.first { $0.0 == "Action" }?.1
            if action == "Encrypt", let p = doc["Plaintext"]?.stringValue, let plain = Base64.decode(p) {
                let blob = [0x4B] + plain.map { $0 ^ 0x5A }
                return .json(200, #"{"ResponseMetadata":{\#(meta)},"Result":{"CiphertextBlob":"\#(Base64.encodeString(blob))","KeyID":"\#(keyID)"}}"#)
            }
            if action == "Decrypt", let c = doc["CiphertextBlob"]?.stringValue, let blob = Base64.decode(c), blob.first == 0x4B {
                let plain = blob.dropFirst().map { $0 ^ 0x5A }
                return .json(200, #"{"ResponseMetadata":{\#(meta)},"Result":{"Plaintext":"\#(Base64.encodeString(plain))","KeyID":"\#(keyID)"}}"#)
            }
            return .json(400, #"{"ResponseMetadata":{\#(meta),"Error":{"Code":"InvalidCiphertext","Message":"bad blob"}}}"#)
        }
    }

    func provider(_ server: TestHTTPServer, dir: String, keyID: String = "test-key", secret: String = secretKey) throws -> VolcengineKMSProvider {
        writeFile(dir + "/creds", "# test credentials\naccess_key = \(Self.accessKey)\nsecret_key = \"\(secret)\"\n")
        return try #require(try KeySource.parse([
            "key_provider": "volcengine_kms", "volcengine_key_id": keyID, "volcengine_endpoint": server.address,
            "volcengine_credentials_file": dir + "/creds", "volcengine_encrypted_key_file": dir + "/sub/root.enc",
            "volcengine_timeout": "3",
        ]).provider as? VolcengineKMSProvider)
    }

    @Test func createThenLoad() throws {
        let server = Self.fakeKMS(); defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        let p = try provider(server, dir: dir)
        let created = try p.createRootKey()
        var st = stat()
        #expect(stat(dir + "/sub/root.enc", &st) == 0 && st.st_mode & 0o777 == 0o600)
        let raw = try #require(FileManager.default.contents(atPath: dir + "/sub/root.enc"))
        #expect(raw.count == 33 && raw.first == 0x4B, "the file holds the raw CiphertextBlob bytes")
        let loaded = try p.loadRootKey()
        #expect(loaded.bytes.constantTimeEquals(created.bytes))
        let again = keyError { _ = try p.createRootKey() }
        guard case .alreadyExists? = again else { Issue.record("create must refuse an existing file: \(String(describing: again))"); return }
        #expect(try p.loadRootKey().keyID == created.keyID)
        #expect(server.requests.allSatisfy { $0.header("Content-Type") == "application/json" && $0.path == "/" })
    }

    @Test func failuresAreClear() throws {
        let server = Self.fakeKMS(); defer { server.stop() }
        let dir = makeTempDir(); defer { removeTree(dir) }
        let missing = keyErrorMessage { _ = try provider(server, dir: dir).loadRootKey() } ?? ""
        #expect(missing.contains("init-key --provider volcengine_kms"), "\(missing)")
        let disabled = keyErrorMessage { _ = try provider(server, dir: dir, keyID: "error-key").createRootKey() } ?? ""
        #expect(disabled.contains("KeyDisabled") && disabled.contains("the key is disabled") && disabled.contains("RequestId req-1"), "\(disabled)")
        let badSecret = keyErrorMessage { _ = try provider(server, dir: dir, secret: "wrong").createRootKey() } ?? ""
        #expect(badSecret.contains("SignatureDoesNotMatch") && badSecret.contains("check the access key"), "\(badSecret)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/sub/root.enc"), "a failed create leaves no file")
        let unreachable = keyErrorMessage {
            var s = try provider(server, dir: dir).settings
            s.endpoint = RemoteEndpoint(tls: false, host: "127.0.0.1", port: closedPort())
            _ = try VolcengineKMSProvider(settings: s).createRootKey()
        } ?? ""
        #expect(unreachable.contains("unreachable") && unreachable.contains("Connection refused"), "\(unreachable)")
    }

    @Test func credentialsFiles() throws {
        let dir = makeTempDir(); defer { removeTree(dir) }
        writeFile(dir + "/a", "export VOLCENGINE_ACCESS_KEY=AK1\nVOLCENGINE_SECRET_KEY='s k'\nsession_token: tok\n")
        let a = try VolcengineKMSProvider.parseCredentialsFile(dir + "/a")
        #expect(a.accessKeyID == "AK1" && a.sessionToken == "tok")
        #expect(a.secretAccessKey.withUnsafeBytes { Array($0) } == Array("s k".utf8))
        writeFile(dir + "/b", "access_key = AK\nregion = x\n")
        let b = keyErrorMessage { _ = try VolcengineKMSProvider.parseCredentialsFile(dir + "/b") } ?? ""
        #expect(b.contains("unknown setting region"), "\(b)")
        writeFile(dir + "/c", "access_key = AK\nsecret_key = SK\n", mode: 0o640)
        #expect((keyErrorMessage { _ = try VolcengineKMSProvider.parseCredentialsFile(dir + "/c") } ?? "").contains("chmod 600"))
        writeFile(dir + "/d", "access_key = AK\n")
        #expect((keyErrorMessage { _ = try VolcengineKMSProvider.parseCredentialsFile(dir + "/d") } ?? "").contains("both"))
    }
}
