import Foundation
import Testing
import VikingCrypto
@testable import VikingKeys

/// `config=ov.conf`: OpenViking's `encryption` section, same field names as OpenViking's EncryptionConfig.
@Suite struct OpenVikingConfigTests {
    func withConfig<T>(_ json: String, _ body: (String) throws -> T) rethrows -> T {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let path = dir + "/ov.conf"
        writeFile(path, json)
        return try body(path)
    }

    func provider(_ json: String, _ options: [String: String] = [:]) throws -> any RootKeyProvider {
        try withConfig(json) { path in
            var o = options
            o["config"] = path
            return try KeySource.parse(o).provider
        }
    }

    func failure(_ json: String, _ options: [String: String] = [:]) -> String {
        withConfig(json) { path in
            var o = options
            o["config"] = path
            return keyErrorMessage { _ = try KeySource.parse(o) } ?? "no error"
        }
    }

    @Test func localProviderWithTilde() throws {
        let p = try provider(#"{"storage": {"x": 1}, "encryption": {"enabled": true, "provider": "local", "local": {"key_file": "~/keys/master.key"}}}"#)
        let file = try #require(p as? KeyFileProvider)
        #expect(file.path == (env("HOME") ?? "/root") + "/keys/master.key")
        #expect(p.kind == .localFile)
    }

    @Test func localProviderDefaults() throws {
        let p = try provider(#"{"encryption": {"enabled": true}}"#)
        #expect((p as? KeyFileProvider)?.path == (env("HOME") ?? "/root") + "/.openviking/master.key")
        let overridden = try provider(#"{"encryption": {"enabled": true}}"#, ["root_key_file": "/tmp/other.key"])
        #expect((overridden as? KeyFileProvider)?.path == "/tmp/other.key")
    }

    @Test func vaultSection() throws {
        let p = try provider("""
        {"encryption": {"enabled": true, "provider": "vault",
          "vault": {"address": "https://vault.example.com:8200", "token": "hvs.x", "mount_point": "transit2",
                    "kv_mount_point": "kv", "root_key_name": "rk", "encrypted_root_key_key": "ov/erk"},
          "api_key_hashing": {"enabled": false}, "params": {}}}
        """)
        let vault = try #require(p as? VaultProvider)
        let s = vault.settings
        #expect(s.address == RemoteEndpoint(tls: true, host: "vault.example.com", port: 8200))
        #expect(s.transitMount == "transit2" && s.transitKey == "rk" && s.kvMount == "kv" && s.kvPath == "ov/erk")
        #expect(s.kvVersion == 1, "OpenViking's default KV version is 1")
        guard case .inline = s.token else { Issue.record("the token should come from ov.conf"); return }
        #expect(!vault.summary.contains("hvs.x"))
    }

    @Test func vaultLegacyKeyNameAndOverrides() throws {
        let json = #"{"encryption": {"enabled": true, "provider": "vault", "vault": {"address": "http://127.0.0.1:8200", "key_name": "legacy", "kv_version": 2}}}"#
        let p = try #require(try provider(json) as? VaultProvider)
        #expect(p.settings.transitKey == "legacy")
        #expect(p.settings.kvVersion == 2)
        let o = try #require(try provider(json, ["vault_kv_version": "1", "vault_token_file": "/run/token", "vault_timeout": "2.5"]) as? VaultProvider)
        #expect(o.settings.kvVersion == 1 && o.settings.timeout == 2.5)
        guard case .file("/run/token") = o.settings.token else { Issue.record("vault_token_file should win"); return }
        // root_key_name wins over key_name when both are set.
        let both = try #require(try provider(#"{"encryption": {"enabled": true, "provider": "vault", "vault": {"address": "http://h:1", "key_name": "old", "root_key_name": "new"}}}"#) as? VaultProvider)
        #expect(both.settings.transitKey == "new")
    }

    @Test func volcengineSection() throws {
        let p = try provider("""
        {"encryption": {"enabled": true, "provider": "volcengine_kms",
          "volcengine_kms": {"key_id": "kid", "region": "cn-shanghai", "access_key": "AK", "secret_key": "SK",
                             "key_file": "~/.openviking/kms.enc"}}}
        """)
        let kms = try #require(p as? VolcengineKMSProvider)
        #expect(kms.settings.keyID == "kid" && kms.settings.region == "cn-shanghai")
        #expect(kms.settings.endpoint == RemoteEndpoint(tls: true, host: "kms.cn-shanghai.volcengineapi.com", port: 443))
        #expect(kms.settings.encryptedKeyFile == (env("HOME") ?? "/root") + "/.openviking/kms.enc")
        #expect(kms.kind == .volcengineKMS)
        let defaults = try #require(try provider(#"{"encryption": {"enabled": true, "provider": "volcengine_kms", "volcengine_kms": {"key_id": "k", "endpoint": "kms.example.com"}}}"#) as? VolcengineKMSProvider)
        #expect(defaults.settings.region == "cn-beijing")
        #expect(defaults.settings.endpoint.hostHeader == "kms.example.com" && defaults.settings.endpoint.tls)
        #expect(defaults.settings.encryptedKeyFile.hasSuffix("/.openviking/openviking-volcengine-root-key.enc"))
    }

    @Test func missingFile() {
        let message = keyErrorMessage { _ = try KeySource.parse(["config": "/nonexistent/ov.conf"]) } ?? ""
        #expect(message.contains("/nonexistent/ov.conf") && message.contains("No such file"))
    }

    @Test func malformedJSON() {
        let message = failure("{\n  \"encryption\": {\"enabled\": true,}\n}")
        #expect(message.contains("not valid JSON") && message.contains("ov.conf") && message.contains("line 2"), "\(message)")
        #expect(failure("[1, 2]").contains("not a JSON object"))
    }

    @Test func disabled() {
        let message = failure(#"{"encryption": {"enabled": false, "provider": "local"}}"#)
        #expect(message.contains("encryption is disabled in") && message.contains("ov.conf"), "\(message)")
        #expect(failure(#"{"storage": {}}"#).contains("encryption is disabled in"))
        #expect(failure(#"{"encryption": {"provider": "vault"}}"#).contains("encryption is disabled in"))
    }

    @Test func unknownSettingsAreNamed() {
        #expect(failure(#"{"encryption": {"enabled": true, "cipher": "aes"}}"#).contains("encryption.cipher"))
        let vault = failure(#"{"encryption": {"enabled": true, "provider": "vault", "vault": {"address": "http://h:1", "adress": "x"}}}"#)
        #expect(vault.contains("encryption.vault.adress"), "\(vault)")
        #expect(failure(#"{"encryption": {"enabled": true, "local": {"keyfile": "x"}}}"#).contains("encryption.local.keyfile"))
        #expect(failure(#"{"encryption": {"enabled": true, "volcengine_kms": {"key": "x"}}}"#).contains("encryption.volcengine_kms.key"))
        #expect(failure(#"{"encryption": {"enabled": true, "params": {"rotation": 1}}}"#).contains("encryption.params"))
        #expect(failure(#"{"encryption": {"enabled": true, "provider": "aws_kms"}}"#).contains("'aws_kms' in"))
        #expect(failure(#"{"encryption": {"enabled": "yes"}}"#).contains("encryption.enabled"))
        #expect(failure(#"{"encryption": {"enabled": true, "provider": "vault", "vault": {"address": "http://h:1", "kv_version": 3}}}"#).contains("kv_version"))
    }

    @Test func conflictingOptions() {
        #expect(failure(#"{"encryption": {"enabled": true, "provider": "vault", "vault": {"address": "http://h:1"}}}"#,
                        ["key_provider": "volcengine_kms"]).contains("contradicts"))
        #expect(failure(#"{"encryption": {"enabled": true, "provider": "vault", "vault": {"address": "http://h:1"}}}"#,
                        ["volcengine_region": "cn-beijing"]).contains("volcengine_region"))
        #expect(failure(#"{"encryption": {"enabled": true, "provider": "vault", "vault": {}}}"#).contains("vault_addr")
                || env("VAULT_ADDR") != nil)
        #expect(failure(#"{"encryption": {"enabled": true, "provider": "volcengine_kms", "volcengine_kms": {"region": "cn-beijing"}}}"#).contains("volcengine_key_id"))
        #expect(failure(#"{"encryption": {"enabled": true, "provider": "volcengine_kms", "volcengine_kms": {"key_id": "k", "access_key": "AK"}}}"#).contains("secret_key"))
    }
}

/// Vault and Volcengine settings given as options (`-o` / admin flags).
@Suite struct RemoteOptionTests {
    @Test func optionNamesAreKnown() {
        for name in ["vault_addr", "vault_token_file", "vault_cacert", "vault_namespace", "vault_transit_mount",
                     "vault_transit_key", "vault_kv_mount", "vault_kv_path", "vault_kv_version", "vault_timeout",
                     "volcengine_region", "volcengine_endpoint", "volcengine_key_id", "volcengine_credentials_file",
                     "volcengine_encrypted_key_file", "volcengine_timeout"] {
            #expect(KeySource.optionNames.contains(name), "\(name)")
        }
        #expect(!KeySource.optionNames.contains("vault_token"), "a token must never be an option")
    }

    @Test func vaultOptions() throws {
        let source = try KeySource.parse(["key_provider": "vault", "vault_addr": "http://127.0.0.1:8200",
                                          "vault_token_file": "~/t", "vault_namespace": "team", "vault_kv_mount": "/kv/",
                                          "vault_kv_path": "a/b", "vault_cacert": "/ca.pem"])
        let s = try #require(source.provider as? VaultProvider).settings
        #expect(s.kvVersion == 2 && s.kvMount == "kv" && s.kvPath == "a/b" && s.transitMount == "transit")
        #expect(s.transitKey == "openviking-root-key" && s.namespace == "team" && s.caCertFile == "/ca.pem" && s.timeout == 10)
        #expect(s.kvAPIPath == "/v1/kv/data/a/b")
        guard case .file(let f) = s.token, f.hasSuffix("/t"), !f.hasPrefix("~") else { Issue.record("token file"); return }
    }

    @Test func vaultOptionErrors() {
        func message(_ o: [String: String]) -> String { keyErrorMessage { _ = try KeySource.parse(o) } ?? "no error" }
        #expect(message(["key_provider": "vault", "vault_addr": "127.0.0.1:8200"]).contains("not an http"))
        #expect(message(["key_provider": "vault", "vault_addr": "http://h:1", "vault_kv_version": "3"]).contains("expected 1 or 2"))
        #expect(message(["key_provider": "vault", "vault_addr": "http://h:1", "vault_timeout": "-1"]).contains("vault_timeout"))
        #expect(message(["key_provider": "vault", "vault_addr": "http://h:1", "vault_kv_path": "../x"]).contains("vault_kv_path"))
        #expect(message(["key_provider": "vault", "vault_addr": "http://h:1", "volcengine_key_id": "k"]).contains("volcengine_key_id"))
        #expect(message(["key_provider": "vault", "vault_addr": "http://h:1", "root_key_file": "/k"]).contains("root_key_file"))
        #expect(message(["key_provider": "hsm"]).contains("unknown key_provider"))
    }

    @Test func volcengineOptions() throws {
        let source = try KeySource.parse(["key_provider": "volcengine_kms", "volcengine_key_id": "kid",
                                          "volcengine_endpoint": "http://127.0.0.1:9999", "volcengine_region": "cn-shanghai",
                                          "volcengine_encrypted_key_file": "/tmp/x.enc"])
        let s = try #require(source.provider as? VolcengineKMSProvider).settings
        #expect(s.endpoint == RemoteEndpoint(tls: false, host: "127.0.0.1", port: 9999))
        #expect(s.region == "cn-shanghai" && s.keyID == "kid" && s.encryptedKeyFile == "/tmp/x.enc")
        guard case .environment = s.credentials else { Issue.record("credentials from the environment"); return }
        let m = keyErrorMessage { _ = try KeySource.parse(["key_provider": "volcengine_kms"]) } ?? ""
        #expect(m.contains("volcengine_key_id"))
        let m2 = keyErrorMessage { _ = try KeySource.parse(["key_provider": "volcengine_kms", "volcengine_key_id": "k", "vault_addr": "http://h:1"]) } ?? ""
        #expect(m2.contains("vault_addr"))
    }
}
