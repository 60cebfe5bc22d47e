import VikingCrypto
import VikingJSON
#if canImport(Glibc)
import Glibc
#endif

/// The `encryption` section of an OpenViking `ov.conf` (JSON), with OpenViking's field names:
///
/// ```json
/// "encryption": {
///   "enabled": true,
///   "provider": "local" | "vault" | "volcengine_kms",
///   "local": { "key_file": "~/.openviking/master.key" },
///   "vault": { "address", "token", "mount_point", "kv_mount_point", "kv_version", "root_key_name",
///              "encrypted_root_key_key", "key_name" (legacy) },
///   "volcengine_kms": { "key_id", "region", "access_key", "secret_key", "endpoint", "key_file" },
///   "api_key_hashing": { "enabled" },   // API keys, not the root key: accepted, not used here
///   "params": {}                        // must be empty: vikingfs knows no extra parameters
/// }
/// ```
///
/// Every other name in the section is an error naming it: a setting vikingfs would silently ignore could make it
/// use another key than OpenViking does. The rest of ov.conf (storage, models…) is not vikingfs's business.
struct OpenVikingConfig {
    let path: String
    let provider: String
    let localKeyFile: String?
    let vault: VaultSettings.ConfigFields
    let volcengine: VolcengineSettings.ConfigFields

    static let sectionNames = ["enabled", "provider", "local", "vault", "volcengine_kms", "api_key_hashing", "params"]
    static let localNames = ["key_file"]
    static let vaultNames = ["address", "token", "mount_point", "key_name", "kv_mount_point", "kv_version", "root_key_name",
                             "encrypted_root_key_key"]
    static let volcengineNames = ["key_id", "region", "access_key", "secret_key", "endpoint", "key_file"]
    static let providers = ["local", "vault", "volcengine_kms"]
    static let defaultLocalKeyFile = "~/.openviking/master.key"

    static func load(path: String) throws(KeyError) -> OpenVikingConfig {
        try parse(try readConfigFile(path), path: path)
    }

    static func readConfigFile(_ path: String) throws(KeyError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw .unsupportedConfig("cannot read the OpenViking config \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw .unsupportedConfig("the OpenViking config \(path) is not a regular file")
        }
        guard st.st_size <= 4 << 20 else { throw .unsupportedConfig("the OpenViking config \(path) is larger than 4 MiB") }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        guard bytes.withUnsafeMutableBytes({ readFully(fd, into: $0) }) == bytes.count else {
            throw .unsupportedConfig("short read of the OpenViking config \(path)")
        }
        return bytes
    }

    static func parse(_ bytes: [UInt8], path: String) throws(KeyError) -> OpenVikingConfig {
        let root: JSON
        do { root = try JSON.parse(bytes, allowingByteOrderMark: true) } catch {
            throw .unsupportedConfig("the OpenViking config \(path) is not valid JSON: \(error)")
        }
        guard root.members != nil else { throw .unsupportedConfig("the OpenViking config \(path) is not a JSON object") }
        guard let section = root["encryption"] else {
            throw .unsupportedConfig("encryption is disabled in \(path): it has no \"encryption\" section")
        }
        guard let members = section.members else {
            throw .unsupportedConfig("\"encryption\" in \(path) is \(section.typeName), not an object")
        }
        try checkNames(members, known: sectionNames, where: "encryption", path: path)

        let enabled = try bool(section["enabled"], "encryption.enabled", path: path) ?? false
        guard enabled else {
            throw .unsupportedConfig("encryption is disabled in \(path) (encryption.enabled is not true); "
                + "vikingfs only mounts with encryption on")
        }
        let provider = try string(section["provider"], "encryption.provider", path: path) ?? "local"
        guard providers.contains(provider) else {
            throw .unsupportedConfig("encryption.provider '\(provider)' in \(path) is not supported (expected local, vault or volcengine_kms)")
        }

        let local = try subsection(section, "local", names: localNames, path: path)
        let vault = try subsection(section, "vault", names: vaultNames, path: path)
        let volc = try subsection(section, "volcengine_kms", names: volcengineNames, path: path)
        if let hashing = section["api_key_hashing"] {
            guard let m = hashing.members else {
                throw .unsupportedConfig("encryption.api_key_hashing in \(path) is \(hashing.typeName), not an object")
            }
            try checkNames(m, known: ["enabled"], where: "encryption.api_key_hashing", path: path)
            _ = try bool(hashing["enabled"], "encryption.api_key_hashing.enabled", path: path)
        }
        if let params = section["params"] {
            guard let m = params.members else {
                throw .unsupportedConfig("encryption.params in \(path) is \(params.typeName), not an object")
            }
            guard m.isEmpty else {
                throw .unsupportedConfig("encryption.params in \(path) sets \(m.map(\.key).joined(separator: ", ")), "
                    + "which vikingfs does not support")
            }
        }

        var vaultFields = VaultSettings.ConfigFields()
        vaultFields.address = try string(vault?["address"], "encryption.vault.address", path: path)
        vaultFields.token = try string(vault?["token"], "encryption.vault.token", path: path)
        vaultFields.mountPoint = try string(vault?["mount_point"], "encryption.vault.mount_point", path: path)
        vaultFields.kvMountPoint = try string(vault?["kv_mount_point"], "encryption.vault.kv_mount_point", path: path)
        vaultFields.encryptedRootKeyKey = try string(vault?["encrypted_root_key_key"], "encryption.vault.encrypted_root_key_key", path: path)
        if let v = vault?["kv_version"], v != .null {
            guard let n = v.doubleValue, n == 1 || n == 2 else {
                throw .unsupportedConfig("encryption.vault.kv_version in \(path) must be 1 or 2")
            }
            vaultFields.kvVersion = Int(n)
        }
        // OpenViking: root_key_name wins; the legacy key_name is used only when root_key_name keeps its default and
        // key_name was changed from its own default.
        let rootKeyName = try string(vault?["root_key_name"], "encryption.vault.root_key_name", path: path)
        let keyName = try string(vault?["key_name"], "encryption.vault.key_name", path: path)
        if (rootKeyName == nil || rootKeyName == "openviking-root-key"), let keyName, keyName != "openviking-root" {
            vaultFields.rootKeyName = keyName
        } else {
            vaultFields.rootKeyName = rootKeyName
        }

        var volcFields = VolcengineSettings.ConfigFields()
        volcFields.keyID = try string(volc?["key_id"], "encryption.volcengine_kms.key_id", path: path)
        volcFields.region = try string(volc?["region"], "encryption.volcengine_kms.region", path: path)
        volcFields.accessKey = try string(volc?["access_key"], "encryption.volcengine_kms.access_key", path: path)
        volcFields.secretKey = try string(volc?["secret_key"], "encryption.volcengine_kms.secret_key", path: path)
        volcFields.endpoint = try string(volc?["endpoint"], "encryption.volcengine_kms.endpoint", path: path)
        volcFields.keyFile = try string(volc?["key_file"], "encryption.volcengine_kms.key_file", path: path)

        return OpenVikingConfig(path: path, provider: provider,
                                localKeyFile: try string(local?["key_file"], "encryption.local.key_file", path: path),
                                vault: vaultFields, volcengine: volcFields)
    }

    /// The provider the section selects; options given beside `config=` override its settings.
    func makeProvider(overrides: [String: String]) throws(KeyError) -> any RootKeyProvider {
        if let asked = overrides["key_provider"] {
            let normalized = asked == "file" ? "local" : asked
            guard normalized == provider else {
                throw .unsupportedConfig("key_provider=\(asked) contradicts encryption.provider \"\(provider)\" in \(path)")
            }
        }
        do throws(KeyError) {
            if let remote = try KeySource.makeRemoteProvider(kind: provider, options: overrides, vaultConfig: vault,
                                                             volcengineConfig: volcengine) {
                return remote
            }
            try rejectOptions(notFor: "local", in: overrides, allowed: ["root_key_file"])
        } catch {
            throw inConfig(error)
        }
        let file = overrides["root_key_file"] ?? localKeyFile ?? Self.defaultLocalKeyFile
        guard !file.isEmpty else { throw .unsupportedConfig("encryption.local.key_file in \(path) is empty") }
        return KeyFileProvider(path: expandTilde(file))
    }

    private func inConfig(_ error: KeyError) -> KeyError {
        if case .unsupportedConfig(let m) = error { return .unsupportedConfig("\(m) (with config \(path))") }
        return error
    }

    // MARK: helpers

    private static func checkNames(_ members: [JSON.Member], known: [String], where section: String, path: String) throws(KeyError) {
        let unknown = members.map(\.key).filter { !known.contains($0) }
        guard unknown.isEmpty else {
            let list = unknown.map { "\(section).\($0)" }.joined(separator: ", ")
            throw .unsupportedConfig("unknown setting\(unknown.count > 1 ? "s" : "") \(list) in \(path) "
                + "(\(section) knows \(known.joined(separator: ", ")))")
        }
    }

    private static func subsection(_ section: JSON, _ name: String, names: [String], path: String) throws(KeyError) -> JSON? {
        guard let value = section[name], value != .null else { return nil }
        guard let members = value.members else {
            throw .unsupportedConfig("encryption.\(name) in \(path) is \(value.typeName), not an object")
        }
        try checkNames(members, known: names, where: "encryption.\(name)", path: path)
        return value
    }

    private static func string(_ value: JSON?, _ name: String, path: String) throws(KeyError) -> String? {
        guard let value, value != .null else { return nil }
        guard case .string(let s) = value else { throw .unsupportedConfig("\(name) in \(path) is \(value.typeName), not a string") }
        return s
    }

    private static func bool(_ value: JSON?, _ name: String, path: String) throws(KeyError) -> Bool? {
        guard let value, value != .null else { return nil }
        guard case .bool(let b) = value else { throw .unsupportedConfig("\(name) in \(path) is \(value.typeName), not true or false") }
        return b
    }
}
