// Placeholder hooks filled by the key-provider work (issue 4): Vault/OpenBao and Volcengine KMS, and ov.conf parsing.
extension KeySource {
    static let extraOptionNames: Set<String> = []

    static func makeRemoteProvider(kind: String, options: [String: String]) throws(KeyError) -> (any RootKeyProvider)? {
        nil
    }
}

func providerFromOpenVikingConfig(path: String, overrides: [String: String]) throws(KeyError) -> any RootKeyProvider {
    throw .unsupportedConfig("config= is not supported yet")
}
