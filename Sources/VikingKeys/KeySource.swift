import VikingCrypto

/// Where the root key comes from, as the mount (`-o key=value`) and the admin command (`--key value`) say it.
/// Both front ends reduce their arguments to the same `[String: String]` of option names, so every key source
/// is spelled the same way everywhere:
///
/// - `key_provider=file|vault|volcengine_kms` (default `file`, or what `config=` says)
/// - `root_key_file=PATH` (file provider)
/// - `old_root_key_file=PATH` (an extra key that may open files during a rotation; never seals)
/// - `config=PATH` (an OpenViking `ov.conf`; its `encryption` section)
/// - the Vault and Volcengine settings, see `VaultSettings` and `VolcengineSettings`.
public struct KeySource: Sendable {
    public var provider: any RootKeyProvider
    public var previousProviders: [any RootKeyProvider]

    /// Option names this type understands; front ends use it to reject unknown options with a clear message.
    public static let optionNames: Set<String> = Set(["key_provider", "root_key_file", "old_root_key_file", "config"])
        .union(KeySource.extraOptionNames)

    public init(provider: any RootKeyProvider, previousProviders: [any RootKeyProvider] = []) {
        self.provider = provider
        self.previousProviders = previousProviders
    }

    public static func parse(_ options: [String: String]) throws(KeyError) -> KeySource {
        var previous: [any RootKeyProvider] = []
        if let old = options["old_root_key_file"] { previous.append(KeyFileProvider(path: expandTilde(old))) }
        if let config = options["config"] {
            let provider = try providerFromOpenVikingConfig(path: expandTilde(config), overrides: options)
            return KeySource(provider: provider, previousProviders: previous)
        }
        let kind = options["key_provider"] ?? "file"
        switch kind {
        case "file", "local":
            guard let path = options["root_key_file"] else {
                throw .unsupportedConfig("no root key given: use root_key_file=PATH, key_provider=vault|volcengine_kms, or config=ov.conf")
            }
            return KeySource(provider: KeyFileProvider(path: expandTilde(path)), previousProviders: previous)
        default:
            guard let provider = try makeRemoteProvider(kind: kind, options: options) else {
                throw .unsupportedConfig("unknown key_provider '\(kind)' (expected file, vault or volcengine_kms)")
            }
            return KeySource(provider: provider, previousProviders: previous)
        }
    }

    /// Loads every key once. Fails, never invents a key, when any cannot be loaded.
    public func loadKeyRing() throws(KeyError) -> KeyRing {
        let primary = try provider.loadRootKey()
        var previous: [RootKey] = []
        for p in previousProviders { previous.append(try p.loadRootKey()) }
        return KeyRing(primary: primary, previous: previous, providerKind: provider.kind)
    }
}

/// `~` and `~/...` expand to `$HOME`, as OpenViking's config loader does.
public func expandTilde(_ path: String) -> String {
    guard path == "~" || path.hasPrefix("~/") else { return path }
    let home = getenvString("HOME") ?? "/root"
    return home + path.dropFirst()
}

func getenvString(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}
#if canImport(Glibc)
import Glibc
#endif
