import VikingCrypto

/// Which kind of key source holds the root key. The raw value is OVE1's provider byte (DESIGN 4.1): a marker
/// only, never key material.
public enum ProviderKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case localFile = 0x01
    case vault = 0x02
    case volcengineKMS = 0x03

    public var description: String {
        switch self {
        case .localFile: return "local"
        case .vault: return "vault"
        case .volcengineKMS: return "volcengine_kms"
        }
    }
}

/// A 32-byte root key and the identifier that native headers record (needed by key rotation).
public final class RootKey: Sendable {
    public static let length = 32
    public let bytes: SecureBytes
    /// HKDF-SHA256(root key, salt "vikingfs-root-key-id-v1", no info), first 8 bytes: identifies the key
    /// without revealing anything usable about it.
    public let keyID: [UInt8]

    public init(bytes: SecureBytes) throws(KeyError) {
        guard bytes.count == RootKey.length else { throw .invalidRootKey("a root key is \(RootKey.length) bytes, got \(bytes.count)") }
        self.bytes = bytes
        do {
            let id = try HKDF.sha256(ikm: bytes, salt: Array("vikingfs-root-key-id-v1".utf8), info: [], length: 8)
            keyID = id.withUnsafeBytes { Array($0) }
        } catch {
            throw .crypto(error)
        }
    }

    public var keyIDHex: String { Hex.encode(keyID) }

    /// Account Key = HKDF-SHA256(ikm = root key, salt = "openviking-kek-salt-v1",
    /// info = "openviking:kek:v1:" + account ID, 32 bytes), exactly as OpenViking derives it.
    public func deriveAccountKey(_ account: String) throws(KeyError) -> SecureBytes {
        do {
            return try HKDF.sha256(ikm: bytes, salt: Array("openviking-kek-salt-v1".utf8),
                                   info: Array("openviking:kek:v1:\(account)".utf8), length: 32)
        } catch {
            throw .crypto(error)
        }
    }
}

public enum KeyError: Error, CustomStringConvertible, Equatable {
    case invalidRootKey(String)
    case keyFile(path: String, reason: String)
    case provider(String)
    case unsupportedConfig(String)
    case alreadyExists(String)
    case crypto(CryptoError)

    public var description: String {
        switch self {
        case .invalidRootKey(let why): return "invalid root key: \(why)"
        case .keyFile(let path, let reason): return "key file \(path): \(reason)"
        case .provider(let why): return why
        case .unsupportedConfig(let why): return "configuration: \(why)"
        case .alreadyExists(let what): return "\(what) already exists; refusing to overwrite it"
        case .crypto(let e): return "crypto: \(e)"
        }
    }
}
