import VikingCrypto
import VikingJSON
#if canImport(Glibc)
import Glibc
#endif

/// Where the Vault/OpenBao provider finds the root key, in OpenViking's layout (DESIGN 5):
/// a Transit key (`transit/openviking-root-key`, type aes256-gcm96) wraps the root key, and the wrapped key is kept
/// in a KV entry (`secret/openviking-encrypted-root-key`) whose field `encrypted_root_key` is the base64 of the UTF-8
/// Transit ciphertext `vault:v1:...`.
///
/// Options (mount `-o`, admin flags):
/// - `vault_addr` (else `VAULT_ADDR`): `http(s)://host:port`
/// - `vault_token_file` (else `VAULT_TOKEN`): never the token itself on a command line
/// - `vault_cacert` (else `VAULT_CACERT`): PEM CA file (or directory) to trust for https
/// - `vault_namespace` (else `VAULT_NAMESPACE`): sent as `X-Vault-Namespace`
/// - `vault_transit_mount` (`transit`), `vault_transit_key` (`openviking-root-key`)
/// - `vault_kv_mount` (`secret`), `vault_kv_path` (`openviking-encrypted-root-key`), `vault_kv_version` (1 or 2;
///   2 with options, 1 from an ov.conf as in OpenViking)
/// - `vault_timeout` (seconds per attempt, default 10)
public struct VaultSettings: Sendable {
    public enum TokenSource: Sendable {
        /// A file holding the token (mode 0600).
        case file(String)
        /// The token given in an OpenViking config file.
        case inline(SecureBytes)
        /// `VAULT_TOKEN`.
        case environment
    }

    public static let optionNames: Set<String> = [
        "vault_addr", "vault_token_file", "vault_cacert", "vault_namespace", "vault_transit_mount", "vault_transit_key",
        "vault_kv_mount", "vault_kv_path", "vault_kv_version", "vault_timeout",
    ]

    public var address: RemoteEndpoint
    public var token: TokenSource
    public var caCertFile: String?
    public var namespace: String?
    public var transitMount = "transit"
    public var transitKey = "openviking-root-key"
    public var kvMount = "secret"
    public var kvPath = "openviking-encrypted-root-key"
    public var kvVersion = 2
    /// Seconds for one HTTP attempt.
    public var timeout = 10.0
    /// Attempts per request on connection errors and 5xx answers (a sealed Vault is never retried).
    public var attempts = 3

    public init(address: RemoteEndpoint, token: TokenSource) {
        self.address = address
        self.token = token
    }

    /// The fields of an ov.conf `encryption.vault` section, as OpenViking names them.
    struct ConfigFields {
        var address: String?
        var token: String?
        var mountPoint: String?
        var kvMountPoint: String?
        var kvVersion: Int?
        var rootKeyName: String?
        var encryptedRootKeyKey: String?
    }

    /// Settings from options, over an ov.conf section when there is one, over the environment, over the defaults.
    init(options: [String: String], config: ConfigFields? = nil) throws(KeyError) {
        guard let addressText = options["vault_addr"] ?? config?.address ?? getenvString("VAULT_ADDR") else {
            throw .unsupportedConfig("the vault provider needs vault_addr=http(s)://HOST:PORT (or VAULT_ADDR)")
        }
        guard let address = RemoteEndpoint(parsing: addressText) else {
            throw .unsupportedConfig("vault_addr '\(addressText)' is not an http:// or https:// address")
        }
        let token: TokenSource
        if let file = options["vault_token_file"] {
            token = .file(expandTilde(file))
        } else if let inline = config?.token, !inline.isEmpty {
            token = .inline(secureFromString(inline))
        } else {
            token = .environment
        }
        self.init(address: address, token: token)
        caCertFile = (options["vault_cacert"] ?? getenvString("VAULT_CACERT")).flatMap { $0.isEmpty ? nil : expandTilde($0) }
        namespace = (options["vault_namespace"] ?? getenvString("VAULT_NAMESPACE")).flatMap { $0.isEmpty ? nil : $0 }
        transitMount = try Self.pathOption(options["vault_transit_mount"] ?? config?.mountPoint, "vault_transit_mount", "transit")
        transitKey = try Self.pathOption(options["vault_transit_key"] ?? config?.rootKeyName, "vault_transit_key", "openviking-root-key")
        kvMount = try Self.pathOption(options["vault_kv_mount"] ?? config?.kvMountPoint, "vault_kv_mount", "secret")
        kvPath = try Self.pathOption(options["vault_kv_path"] ?? config?.encryptedRootKeyKey, "vault_kv_path", "openviking-encrypted-root-key")
        if let text = options["vault_kv_version"] {
            guard text == "1" || text == "2" else { throw .unsupportedConfig("vault_kv_version=\(text): expected 1 or 2") }
            kvVersion = Int(text)!
        } else if let version = config?.kvVersion {
            kvVersion = version
        } else {
            kvVersion = config == nil ? 2 : 1  // OpenViking's default is KV version 1
        }
        timeout = try parseTimeout(options["vault_timeout"], option: "vault_timeout", default: 10)
        if transitKey.contains("/") { throw .unsupportedConfig("vault_transit_key '\(transitKey)' must not contain '/'") }
    }

    private static func pathOption(_ value: String?, _ name: String, _ fallback: String) throws(KeyError) -> String {
        guard let value else { return fallback }
        var s = Substring(value)
        while s.hasPrefix("/") { s = s.dropFirst() }
        while s.hasSuffix("/") { s = s.dropLast() }
        guard !s.isEmpty, !s.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
            throw .unsupportedConfig("\(name)='\(value)' is not a usable Vault path")
        }
        return String(s)
    }

    /// The API path of the KV entry.
    var kvAPIPath: String { kvVersion == 2 ? "/v1/\(kvMount)/data/\(kvPath)" : "/v1/\(kvMount)/\(kvPath)" }
    var kvDisplay: String { "\(kvMount)/\(kvPath) (KV v\(kvVersion))" }
    var transitDisplay: String { "\(transitMount)/\(transitKey)" }
}

/// The root key kept in Vault/OpenBao as OpenViking keeps it. Loading never creates anything; `createRootKey` is the
/// explicit admin action (`vikingfs init-key --provider vault`) and refuses to replace a stored key.
public struct VaultProvider: RootKeyProvider {
    public let settings: VaultSettings
    public var kind: ProviderKind { .vault }
    public var summary: String {
        "Vault \(settings.address) (Transit key \(settings.transitDisplay), KV entry \(settings.kvDisplay))"
    }

    public init(settings: VaultSettings) { self.settings = settings }

    private var client: HTTPClient { HTTPClient(endpoint: settings.address, caFile: settings.caCertFile, timeout: settings.timeout) }

    // MARK: load

    public func loadRootKey() throws(KeyError) -> RootKey {
        let token = try resolveToken()
        do throws(KeyError) {
            guard let ciphertext = try readStoredCiphertext(token: token) else {
                throw KeyError.provider(notStoredMessage(token: token))
            }
            return try decrypt(ciphertext, token: token)
        } catch {
            throw prefixed(error, "cannot load the root key from Vault at \(settings.address)")
        }
    }

    // MARK: create

    public func createRootKey() throws(KeyError) -> RootKey {
        let token = try resolveToken()
        do throws(KeyError) {
            if try readStoredCiphertext(token: token) != nil {
                throw KeyError.alreadyExists("a root key in Vault at \(settings.address), KV entry \(settings.kvDisplay),")
            }
            try ensureTransitKey(token: token)
            let key: SecureBytes
            do { key = try SecureBytes.random(count: RootKey.length) } catch { throw KeyError.crypto(error) }
            let ciphertext = try encrypt(key, token: token)
            // Check the round trip before storing anything: a key that cannot be unwrapped must never be stored.
            let unwrapped = try decrypt(ciphertext, token: token)
            guard unwrapped.bytes.constantTimeEquals(key) else {
                throw KeyError.provider("Vault Transit returned a different key on decryption; nothing was stored")
            }
            try store(ciphertext, token: token)
            let reread = try loadRootKey()
            guard reread.bytes.constantTimeEquals(key) else {
                throw KeyError.provider("the root key read back from \(settings.kvDisplay) differs from the one stored")
            }
            return reread
        } catch {
            if case .alreadyExists = error { throw error }
            throw prefixed(error, "cannot create the root key in Vault at \(settings.address)")
        }
    }

    // MARK: steps

    private func resolveToken() throws(KeyError) -> SecureBytes {
        let token: SecureBytes
        switch settings.token {
        case .file(let path): token = trimmedSecure(try readSecretFile(path, what: "Vault token file"))
        case .inline(let t): token = trimmedSecure(t)
        case .environment:
            guard let t = readEnvSecure("VAULT_TOKEN") else {
                throw .provider("no Vault token: give vault_token_file=PATH (a file with mode 0600) or set VAULT_TOKEN")
            }
            token = t
        }
        guard token.count > 0 else { throw .provider("the Vault token is empty") }
        let printable = token.withUnsafeBytes { p in p.allSatisfy { $0 > 0x20 && $0 < 0x7f } }
        guard printable else { throw .provider("the Vault token holds spaces or control characters; check the token file") }
        return token
    }

    /// The Transit ciphertext stored in KV, or nil when no entry exists.
    private func readStoredCiphertext(token: SecureBytes) throws(KeyError) -> String? {
        let response = try request("GET", settings.kvAPIPath, token: token, purpose: "reading the KV entry \(settings.kvDisplay)")
        if response.status == 404 { return nil }
        guard response.status == 200 else {
            throw failure(response, "GET", settings.kvAPIPath, purpose: "reading the KV entry \(settings.kvDisplay)", capability: "read")
        }
        guard let json = response.json else {
            throw KeyError.provider("the KV entry \(settings.kvDisplay) answer is not JSON: \(response.bodyExcerpt)")
        }
        var fields = json["data"]
        if settings.kvVersion == 2 {
            if let data = fields, case .null = data["data"] ?? .null {
                let deleted = data["metadata"]?["deletion_time"]?.stringValue ?? ""
                throw KeyError.provider("the latest version of the KV entry \(settings.kvDisplay) was deleted"
                    + (deleted.isEmpty ? "" : " at \(deleted)")
                    + "; undelete it (vault kv undelete) rather than creating a new root key, or data sealed with it is lost")
            }
            fields = fields?["data"]
        }
        guard let members = fields?.members else {
            throw KeyError.provider("the KV entry \(settings.kvDisplay) has no data"
                + (settings.kvVersion == 1 ? " (is the mount KV version 2? then set vault_kv_version=2)" : ""))
        }
        guard let value = fields?["encrypted_root_key"] else {
            let names = members.map(\.key).sorted().joined(separator: ", ")
            throw KeyError.provider("the KV entry \(settings.kvDisplay) has no field encrypted_root_key (it has: \(names))"
                + (settings.kvVersion == 1 && members.contains { $0.key == "data" } ? "; the mount looks like KV version 2: set vault_kv_version=2" : ""))
        }
        guard let b64 = value.stringValue, let raw = Base64.decode(b64), let text = String(validating: raw, as: UTF8.self),
              text.hasPrefix("vault:v") else {
            throw KeyError.provider("the field encrypted_root_key of \(settings.kvDisplay) is not the base64 of a Transit ciphertext (vault:v1:...)")
        }
        return text
    }

    private func notStoredMessage(token: SecureBytes) -> String {
        var message = "no root key is stored in the KV entry \(settings.kvDisplay) (GET \(settings.kvAPIPath) answered 404 Not Found)"
        if let actual = mountKVVersion(token: token), actual != settings.kvVersion {
            message += "; the mount \(settings.kvMount)/ is KV version \(actual): set vault_kv_version=\(actual)"
        } else {
            message += "; create one with `vikingfs init-key --provider vault` (a mount never creates a key), "
                + "or check vault_kv_mount, vault_kv_path and vault_kv_version"
        }
        return message
    }

    /// The KV version of the configured mount, if Vault tells (best effort, for hints only).
    private func mountKVVersion(token: SecureBytes) -> Int? {
        guard let response = try? request("GET", "/v1/sys/internal/ui/mounts/\(settings.kvMount)", token: token,
                                          purpose: "looking up the KV mount", attempts: 1),
              response.status == 200, let json = response.json else { return nil }
        guard json["data"]?["type"]?.stringValue == "kv" else { return nil }
        let version = json["data"]?["options"]?["version"]?.stringValue ?? "1"
        return Int(version)
    }

    private func transitPath(_ op: String) -> String { "/v1/\(settings.transitMount)/\(op)/\(settings.transitKey)" }

    private func decrypt(_ ciphertext: String, token: SecureBytes) throws(KeyError) -> RootKey {
        let path = transitPath("decrypt")
        let body = Array("{\"ciphertext\":\(JSON.quoted(ciphertext))}".utf8)
        let response = try request("POST", path, token: token, body: body, purpose: "decrypting the root key with Transit")
        guard response.status == 200 else {
            let errors = vaultErrors(response)
            if response.status == 400 && errors.contains("encryption key not found") {
                throw KeyError.provider("the Transit key \(settings.transitDisplay) does not exist, so the stored root key "
                    + "cannot be unwrapped (check vault_transit_mount and vault_transit_key)")
            }
            throw failure(response, "POST", path, purpose: "decrypting the root key with Transit key \(settings.transitDisplay)", capability: "update")
        }
        let key: SecureBytes? = response.body.withUnsafeBytes { json in
            guard let range = JSON.stringFieldRange(json, field: "plaintext") else { return nil }
            return Base64.decodeSecure(UnsafeRawBufferPointer(rebasing: json[range]))
        }
        guard let key else { throw KeyError.provider("the Transit decrypt answer holds no base64 plaintext") }
        guard key.count == RootKey.length else {
            throw KeyError.invalidRootKey("the key unwrapped by Vault Transit is \(key.count) bytes, not \(RootKey.length)")
        }
        return try RootKey(bytes: key)
    }

    private func encrypt(_ key: SecureBytes, token: SecureBytes) throws(KeyError) -> String {
        let path = transitPath("encrypt")
        var body = Array("{\"plaintext\":\"".utf8)
        body.reserveCapacity(128)
        var b64 = key.withUnsafeBytes { Base64.encode($0) }
        body += b64
        wipe(&b64)
        body += Array("\"}".utf8)
        defer { wipe(&body) }
        let response = try request("POST", path, token: token, body: body, purpose: "encrypting the root key with Transit")
        guard response.status == 200 else {
            throw failure(response, "POST", path, purpose: "encrypting the root key with Transit key \(settings.transitDisplay)", capability: "update")
        }
        guard let ciphertext = response.json?["data"]?["ciphertext"]?.stringValue, ciphertext.hasPrefix("vault:v") else {
            throw KeyError.provider("the Transit encrypt answer holds no ciphertext: \(response.bodyExcerpt)")
        }
        return ciphertext
    }

    /// Creates the Transit key (aes256-gcm96) when it does not exist; uses an existing one as it is.
    private func ensureTransitKey(token: SecureBytes) throws(KeyError) {
        let path = "/v1/\(settings.transitMount)/keys/\(settings.transitKey)"
        let existing = try request("GET", path, token: token, purpose: "reading the Transit key \(settings.transitDisplay)")
        if existing.status == 200 {
            if existing.json?["data"]?["supports_encryption"] == .bool(false) {
                throw KeyError.provider("the Transit key \(settings.transitDisplay) cannot encrypt (type "
                    + "\(existing.json?["data"]?["type"]?.stringValue ?? "?")); use an aes256-gcm96 key")
            }
            return
        }
        guard existing.status == 404 else {
            throw failure(existing, "GET", path, purpose: "reading the Transit key \(settings.transitDisplay)", capability: "read")
        }
        let created = try request("POST", path, token: token, body: Array("{\"type\":\"aes256-gcm96\"}".utf8),
                                  purpose: "creating the Transit key \(settings.transitDisplay)")
        guard created.status == 200 || created.status == 204 else {
            if created.status == 404 || vaultErrors(created).contains("no handler for route") {
                throw KeyError.provider("no Transit engine is mounted at \(settings.transitMount)/ "
                    + "(enable it: vault secrets enable -path=\(settings.transitMount) transit)")
            }
            throw failure(created, "POST", path, purpose: "creating the Transit key \(settings.transitDisplay)", capability: "create")
        }
    }

    private func store(_ ciphertext: String, token: SecureBytes) throws(KeyError) {
        let field = Base64.encodeString(Array(ciphertext.utf8))
        let body: String
        if settings.kvVersion == 2 {
            // cas=0: written only if the entry does not exist, so a key stored meanwhile is never replaced.
            body = "{\"data\":{\"encrypted_root_key\":\"\(field)\"},\"options\":{\"cas\":0}}"
        } else {
            body = "{\"encrypted_root_key\":\"\(field)\"}"
        }
        let response = try request("POST", settings.kvAPIPath, token: token, body: Array(body.utf8),
                                   purpose: "storing the wrapped root key in \(settings.kvDisplay)")
        guard response.status == 200 || response.status == 204 else {
            if response.status == 400 && vaultErrors(response).contains("check-and-set") {
                throw KeyError.alreadyExists("a root key in Vault at \(settings.address), KV entry \(settings.kvDisplay),")
            }
            if response.status == 404 {
                throw KeyError.provider("no KV engine (version \(settings.kvVersion)) is mounted at \(settings.kvMount)/ "
                    + "(enable it: vault secrets enable -path=\(settings.kvMount) -version=\(settings.kvVersion) kv)")
            }
            throw failure(response, "POST", settings.kvAPIPath, purpose: "storing the wrapped root key in \(settings.kvDisplay)",
                          capability: "create")
        }
    }

    // MARK: HTTP

    /// One Vault API call with bounded retries on connection errors and 5xx answers (never on a sealed Vault).
    /// Answers other than those come back to the caller to interpret.
    private func request(_ method: String, _ path: String, token: SecureBytes, body: [UInt8] = [], purpose: String,
                         attempts: Int? = nil) throws(KeyError) -> HTTPResponse {
        var headers: [(String, String)] = [("Accept", "application/json"), ("User-Agent", "vikingfs")]
        if !body.isEmpty { headers.append(("Content-Type", "application/json")) }
        if let ns = settings.namespace { headers.append(("X-Vault-Namespace", ns)) }
        let tries = attempts ?? settings.attempts
        let client = self.client
        return try withRetries(attempts: tries) { (attempt: Int) throws(KeyError) -> RetryStep<HTTPResponse> in
            let response: HTTPResponse
            do throws(HTTPFailure) {
                response = try client.send(method: method, path: percentEncodePath(path), headers: headers,
                                           secretHeaders: [SecretHeader(name: "X-Vault-Token", value: token)], body: body)
            } catch {
                let message = error.providerMessage(service: "Vault", attempt: attempt,
                                                    hint: "check vault_addr and that the server is running",
                                                    timeoutOption: "vault_timeout", timeout: settings.timeout)
                if error.isTransient { return .retry(.provider(message)) }
                throw KeyError.provider(message)
            }
            if response.status == 503 && isSealed(response) {
                throw KeyError.provider("Vault is sealed (HTTP 503 \"Vault is sealed\" while \(purpose)); "
                    + "unseal it (vault/bao operator unseal) and retry; nothing was written and no key was created")
            }
            if response.status >= 500 {
                return .retry(failure(response, method, path, purpose: purpose, capability: nil, attempts: attempt))
            }
            return .done(response)
        }
    }

    private func isSealed(_ response: HTTPResponse) -> Bool {
        vaultErrors(response).lowercased().contains("sealed")
    }

    /// The `errors` array of a Vault error answer, joined; the raw body excerpt when there is none.
    private func vaultErrors(_ response: HTTPResponse) -> String {
        if case .array(let items)? = response.json?["errors"] {
            let texts = items.compactMap { $0.stringValue }.filter { !$0.isEmpty }
            if !texts.isEmpty { return texts.joined(separator: "; ") }
            return ""
        }
        return response.bodyExcerpt
    }

    private func failure(_ response: HTTPResponse, _ method: String, _ path: String, purpose: String, capability: String?,
                         attempts: Int = 1) -> KeyError {
        let errors = vaultErrors(response)
        let detail = errors.isEmpty ? "" : ": \(errors)"
        let apiPath = String(path.dropFirst(4))  // the policy path, without "/v1/"
        switch response.status {
        case 403:
            return .provider("Vault refused the token (HTTP 403\(detail)) while \(purpose) (\(method) \(path)): the token is "
                + "wrong or expired, or its policy lacks the \(capability ?? "needed") capability on \(apiPath)")
        case 401:
            return .provider("Vault rejected the request as unauthenticated (HTTP 401\(detail)) while \(purpose); check the token")
        case 500...:
            return .provider("Vault failed while \(purpose) (HTTP \(response.status) on \(method) \(path)\(detail))"
                + (attempts > 1 ? " after \(attempts) attempts" : ""))
        default:
            return .provider("Vault answered HTTP \(response.status)\(detail) while \(purpose) (\(method) \(path))")
        }
    }
}
