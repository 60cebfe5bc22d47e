import VikingCrypto
import VikingJSON
#if canImport(Glibc)
import Glibc
#endif

/// Where the Volcengine KMS provider finds the root key, as OpenViking keeps it: the root key encrypted by KMS
/// (`Encrypt`, version 2021-02-18) is a file holding the raw CiphertextBlob bytes.
///
/// Options (mount `-o`, admin flags):
/// - `volcengine_key_id`: the KMS key ID (required)
/// - `volcengine_region` (default `cn-beijing`, as OpenViking)
/// - `volcengine_endpoint`: `host`, `https://host` or `http://127.0.0.1:PORT` (default `kms.{region}.volcengineapi.com`)
/// - `volcengine_credentials_file`: `access_key = ...` and `secret_key = ...` lines (mode 0600); else the environment
///   `VOLCENGINE_ACCESS_KEY` and `VOLCENGINE_SECRET_KEY` (and `VOLCENGINE_SESSION_TOKEN` if set)
/// - `volcengine_encrypted_key_file` (default `~/.openviking/openviking-volcengine-root-key.enc`, as OpenViking)
/// - `volcengine_timeout` (seconds per attempt, default 10)
public struct VolcengineSettings: Sendable {
    public enum CredentialSource: Sendable {
        case file(String)
        case inline(accessKeyID: String, secretAccessKey: SecureBytes)
        case environment
    }

    public static let optionNames: Set<String> = [
        "volcengine_region", "volcengine_endpoint", "volcengine_key_id", "volcengine_credentials_file",
        "volcengine_encrypted_key_file", "volcengine_timeout",
    ]

    public static let defaultEncryptedKeyFile = "~/.openviking/openviking-volcengine-root-key.enc"

    public var region: String
    public var endpoint: RemoteEndpoint
    public var keyID: String
    public var credentials: CredentialSource
    public var encryptedKeyFile: String
    public var timeout = 10.0
    public var attempts = 3
    /// A CA file to trust instead of the system store (tests and private endpoints).
    public var caCertFile: String?

    public init(region: String, endpoint: RemoteEndpoint? = nil, keyID: String, credentials: CredentialSource,
                encryptedKeyFile: String) {
        self.region = region
        self.endpoint = endpoint ?? RemoteEndpoint(tls: true, host: "kms.\(region).volcengineapi.com", port: 443)
        self.keyID = keyID
        self.credentials = credentials
        self.encryptedKeyFile = encryptedKeyFile
    }

    /// The fields of an ov.conf `encryption.volcengine_kms` section, as OpenViking names them.
    struct ConfigFields {
        var keyID: String?
        var region: String?
        var accessKey: String?
        var secretKey: String?
        var endpoint: String?
        var keyFile: String?
    }

    init(options: [String: String], config: ConfigFields? = nil) throws(KeyError) {
        let region = options["volcengine_region"] ?? config?.region ?? "cn-beijing"
        guard !region.isEmpty, region.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw .unsupportedConfig("volcengine_region '\(region)' is not a region name such as cn-beijing")
        }
        guard let keyID = options["volcengine_key_id"] ?? config?.keyID, !keyID.isEmpty else {
            throw .unsupportedConfig("the volcengine_kms provider needs volcengine_key_id=KEY_ID (the KMS key that wraps the root key)")
        }
        var endpoint: RemoteEndpoint? = nil
        if let text = options["volcengine_endpoint"] ?? config?.endpoint, !text.isEmpty {
            guard let parsed = RemoteEndpoint(parsing: text, defaultScheme: "https") else {
                throw .unsupportedConfig("volcengine_endpoint '\(text)' is not a host name or an http(s):// address")
            }
            endpoint = parsed
        }
        let credentials: CredentialSource
        if let file = options["volcengine_credentials_file"] {
            credentials = .file(expandTilde(file))
        } else if let ak = config?.accessKey, let sk = config?.secretKey, !ak.isEmpty, !sk.isEmpty {
            credentials = .inline(accessKeyID: ak, secretAccessKey: secureFromString(sk))
        } else if config?.accessKey != nil || config?.secretKey != nil {
            throw .unsupportedConfig("volcengine_kms needs both access_key and secret_key (or neither, to use "
                + "volcengine_credentials_file or VOLCENGINE_ACCESS_KEY/VOLCENGINE_SECRET_KEY)")
        } else {
            credentials = .environment
        }
        let keyFile = options["volcengine_encrypted_key_file"] ?? config?.keyFile ?? Self.defaultEncryptedKeyFile
        self.init(region: region, endpoint: endpoint, keyID: keyID, credentials: credentials, encryptedKeyFile: expandTilde(keyFile))
        timeout = try parseTimeout(options["volcengine_timeout"], option: "volcengine_timeout", default: 10)
    }
}

/// The root key wrapped by Volcengine KMS, in a local file of raw CiphertextBlob bytes (OpenViking's layout).
public struct VolcengineKMSProvider: RootKeyProvider {
    public let settings: VolcengineSettings
    public static let apiVersion = "2021-02-18"
    public var kind: ProviderKind { .volcengineKMS }
    public var summary: String {
        "Volcengine KMS key \(settings.keyID) at \(settings.endpoint) (wrapped root key in \(settings.encryptedKeyFile))"
    }

    public init(settings: VolcengineSettings) { self.settings = settings }

    public func loadRootKey() throws(KeyError) -> RootKey {
        do throws(KeyError) {
            let blob = try readBlob()
            let credentials = try resolveCredentials()
            return try decrypt(blob, credentials: credentials)
        } catch {
            throw prefixed(error, "cannot load the root key through Volcengine KMS")
        }
    }

    public func createRootKey() throws(KeyError) -> RootKey {
        let path = settings.encryptedKeyFile
        var st = stat()
        if lstat(path, &st) == 0 { throw .alreadyExists("the KMS-encrypted root key file \(path)") }
        do throws(KeyError) {
            let credentials = try resolveCredentials()
            let key: SecureBytes
            do { key = try SecureBytes.random(count: RootKey.length) } catch { throw KeyError.crypto(error) }
            let blob = try encrypt(key, credentials: credentials)
            // Check the round trip before writing: a blob that cannot be unwrapped must never be kept.
            let unwrapped = try decrypt(blob, credentials: credentials)
            guard unwrapped.bytes.constantTimeEquals(key) else {
                throw KeyError.provider("KMS returned a different key on decryption; nothing was written")
            }
            try writeBlob(blob)
            return unwrapped
        } catch {
            if case .alreadyExists = error { throw error }
            throw prefixed(error, "cannot create the root key through Volcengine KMS")
        }
    }

    // MARK: the key file

    private func readBlob() throws(KeyError) -> [UInt8] {
        let path = settings.encryptedKeyFile
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let err = errno
            if err == ENOENT {
                throw .keyFile(path: path, reason: "no KMS-encrypted root key here; create one with "
                    + "`vikingfs init-key --provider volcengine_kms` (a mount never creates a key), or check volcengine_encrypted_key_file")
            }
            throw .keyFile(path: path, reason: String(cString: strerror(err)))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw .keyFile(path: path, reason: "not a regular file") }
        guard st.st_size > 0 && st.st_size <= 64 * 1024 else {
            throw .keyFile(path: path, reason: st.st_size == 0 ? "the file is empty" : "too large for a KMS ciphertext")
        }
        var blob = [UInt8](repeating: 0, count: Int(st.st_size))
        guard blob.withUnsafeMutableBytes({ readFully(fd, into: $0) }) == blob.count else { throw .keyFile(path: path, reason: "short read") }
        return blob
    }

    private func writeBlob(_ blob: [UInt8]) throws(KeyError) {
        let path = settings.encryptedKeyFile
        let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        if !dir.isEmpty { makeDirectories(dir) }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            if errno == EEXIST { throw .alreadyExists("the KMS-encrypted root key file \(path)") }
            throw .keyFile(path: path, reason: String(cString: strerror(errno)))
        }
        let written = blob.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == blob.count, fchmod(fd, 0o600) == 0, fsync(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            unlink(path)
            throw .keyFile(path: path, reason: reason)
        }
        close(fd)
        let dfd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    private func makeDirectories(_ dir: String) {
        var st = stat()
        if stat(dir, &st) == 0 { return }
        if let slash = dir.lastIndex(of: "/"), slash != dir.startIndex { makeDirectories(String(dir[..<slash])) }
        mkdir(dir, 0o700)
    }

    // MARK: credentials

    private func resolveCredentials() throws(KeyError) -> VolcengineCredentials {
        switch settings.credentials {
        case .inline(let ak, let sk):
            return VolcengineCredentials(accessKeyID: ak, secretAccessKey: sk)
        case .environment:
            guard let ak = getenvString("VOLCENGINE_ACCESS_KEY"), !ak.isEmpty, let sk = readEnvSecure("VOLCENGINE_SECRET_KEY") else {
                throw .provider("no Volcengine credentials: give volcengine_credentials_file=PATH (access_key and secret_key "
                    + "lines, mode 0600) or set VOLCENGINE_ACCESS_KEY and VOLCENGINE_SECRET_KEY")
            }
            let token = getenvString("VOLCENGINE_SESSION_TOKEN").flatMap { $0.isEmpty ? nil : $0 }
            return VolcengineCredentials(accessKeyID: ak.trimmingSpaces(), secretAccessKey: sk, sessionToken: token)
        case .file(let path):
            return try Self.parseCredentialsFile(path)
        }
    }

    /// Reads `name = value` lines (`#` comments, optional quotes, an optional `export `). Names: `access_key`
    /// (or `access_key_id`, `VOLCENGINE_ACCESS_KEY`), `secret_key` (or `secret_access_key`, `VOLCENGINE_SECRET_KEY`),
    /// and optionally `session_token` (or `VOLCENGINE_SESSION_TOKEN`).
    static func parseCredentialsFile(_ path: String) throws(KeyError) -> VolcengineCredentials {
        let content = try readSecretFile(path, what: "Volcengine credentials file")
        var accessKey: String? = nil
        var secretKey: SecureBytes? = nil
        var sessionToken: String? = nil
        var unknown: [String] = []
        let result: Result<Void, KeyError> = content.withUnsafeBytes { bytes in
            var lineStart = 0
            var lineNumber = 0
            while lineStart < bytes.count {
                var lineEnd = lineStart
                while lineEnd < bytes.count && bytes[lineEnd] != 0x0a { lineEnd += 1 }
                lineNumber += 1
                defer { lineStart = lineEnd + 1 }
                var s = lineStart, e = lineEnd
                while s < e && isSpace(bytes[s]) { s += 1 }
                while e > s && isSpace(bytes[e - 1]) { e -= 1 }
                if s == e || bytes[s] == UInt8(ascii: "#") { continue }
                if e - s > 7 && String(decoding: UnsafeRawBufferPointer(rebasing: bytes[s..<s + 7]), as: UTF8.self) == "export " { s += 7 }
                var sep = s
                while sep < e && bytes[sep] != UInt8(ascii: "=") && bytes[sep] != UInt8(ascii: ":") { sep += 1 }
                guard sep < e else {
                    return .failure(.provider("Volcengine credentials file \(path): line \(lineNumber) is not `name = value`"))
                }
                var ne = sep
                while ne > s && isSpace(bytes[ne - 1]) { ne -= 1 }
                let name = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[s..<ne]), as: UTF8.self).lowercased()
                var vs = sep + 1
                while vs < e && isSpace(bytes[vs]) { vs += 1 }
                var ve = e
                if ve - vs >= 2, bytes[vs] == bytes[ve - 1], bytes[vs] == UInt8(ascii: "\"") || bytes[vs] == UInt8(ascii: "'") {
                    vs += 1; ve -= 1
                }
                let value = UnsafeRawBufferPointer(rebasing: bytes[vs..<ve])
                switch name {
                case "access_key", "access_key_id", "accesskeyid", "volcengine_access_key", "ak":
                    accessKey = String(decoding: value, as: UTF8.self)
                case "secret_key", "secret_access_key", "secretaccesskey", "volcengine_secret_key", "sk":
                    secretKey = SecureBytes(copying: value)
                case "session_token", "volcengine_session_token":
                    sessionToken = String(decoding: value, as: UTF8.self)
                default:
                    unknown.append(name)
                }
            }
            return .success(())
        }
        try result.get()
        guard unknown.isEmpty else {
            throw .provider("Volcengine credentials file \(path): unknown setting\(unknown.count > 1 ? "s" : "") "
                + "\(unknown.joined(separator: ", ")) (expected access_key, secret_key and optionally session_token)")
        }
        guard let accessKey, !accessKey.isEmpty, let secretKey, secretKey.count > 0 else {
            throw .provider("Volcengine credentials file \(path): needs both access_key and secret_key")
        }
        return VolcengineCredentials(accessKeyID: accessKey, secretAccessKey: secretKey,
                                     sessionToken: sessionToken.flatMap { $0.isEmpty ? nil : $0 })
    }

    // MARK: KMS calls

    private func encrypt(_ key: SecureBytes, credentials: VolcengineCredentials) throws(KeyError) -> [UInt8] {
        var body = Array("{\"KeyID\":\(JSON.quoted(settings.keyID)),\"Plaintext\":\"".utf8)
        body.reserveCapacity(body.count + 64)
        var b64 = key.withUnsafeBytes { Base64.encode($0) }
        body += b64
        wipe(&b64)
        body += Array("\"}".utf8)
        defer { wipe(&body) }
        let response = try call("Encrypt", body: body, credentials: credentials)
        guard let result = response.json?["Result"]?["CiphertextBlob"]?.stringValue, let blob = Base64.decode(result), !blob.isEmpty else {
            throw KeyError.provider("the KMS Encrypt answer holds no CiphertextBlob: \(response.bodyExcerpt)")
        }
        return blob
    }

    private func decrypt(_ blob: [UInt8], credentials: VolcengineCredentials) throws(KeyError) -> RootKey {
        let body = Array("{\"KeyID\":\(JSON.quoted(settings.keyID)),\"CiphertextBlob\":\"\(Base64.encodeString(blob))\"}".utf8)
        let response = try call("Decrypt", body: body, credentials: credentials)
        let key: SecureBytes? = response.body.withUnsafeBytes { json in
            guard let range = JSON.stringFieldRange(json, field: "Plaintext") else { return nil }
            return Base64.decodeSecure(UnsafeRawBufferPointer(rebasing: json[range]))
        }
        guard let key else { throw KeyError.provider("the KMS Decrypt answer holds no base64 Plaintext") }
        guard key.count == RootKey.length else {
            throw KeyError.invalidRootKey("the key unwrapped by KMS is \(key.count) bytes, not \(RootKey.length)")
        }
        return try RootKey(bytes: key)
    }

    /// One signed KMS call, with bounded retries on connection errors and 5xx answers. Returns a successful answer
    /// (HTTP 200 without `ResponseMetadata.Error`); anything else becomes a clear error.
    private func call(_ action: String, body: [UInt8], credentials: VolcengineCredentials) throws(KeyError) -> HTTPResponse {
        let endpoint = settings.endpoint
        let client = HTTPClient(endpoint: endpoint, caFile: settings.caCertFile, timeout: settings.timeout)
        let signer = VolcengineSigner(region: settings.region, service: "kms")
        let query = [("Action", action), ("Version", Self.apiVersion)]
        let path = (endpoint.basePath.isEmpty ? "" : endpoint.basePath) + "/"
        let tries = settings.attempts
        return try withRetries(attempts: tries) { (attempt: Int) throws(KeyError) -> RetryStep<HTTPResponse> in
            let headers: [(String, String)] = [
                ("Host", endpoint.hostHeader), ("Content-Type", "application/json"), ("Accept", "application/json"),
                ("User-Agent", "vikingfs"),
            ]
            let signed = signer.sign(method: "POST", path: path, query: query, headers: headers, body: body,
                                     date: VolcengineSigner.currentDate(), credentials: credentials)
            let response: HTTPResponse
            do throws(HTTPFailure) {
                // The client adds basePath itself, so send the path relative to it.
                response = try client.send(method: "POST", path: "/?" + VolcengineSigner.queryString(query),
                                           headers: signed.headers, body: body)
            } catch {
                let message = error.providerMessage(service: "Volcengine KMS", attempt: attempt,
                                                    hint: "check volcengine_endpoint/volcengine_region",
                                                    timeoutOption: "volcengine_timeout", timeout: settings.timeout)
                if error.isTransient { return .retry(.provider(message)) }
                throw KeyError.provider(message)
            }
            if response.status == 200 && !Self.hasError(response) { return .done(response) }
            let failure = KeyError.provider(Self.describeFailure(action: action, response: response, keyID: settings.keyID,
                                                                 attempts: attempt))
            if response.status >= 500 { return .retry(failure) }
            throw failure
        }
    }

    private static func hasError(_ response: HTTPResponse) -> Bool {
        // A successful Decrypt carries the plaintext: look for the error object without parsing it into strings.
        response.body.withUnsafeBytes { p in
            let needle = Array("\"Error\"".utf8)
            guard p.count >= needle.count else { return false }
            for i in 0...(p.count - needle.count) where p[i] == needle[0] {
                if (0..<needle.count).allSatisfy({ p[i + $0] == needle[$0] }) { return true }
            }
            return false
        }
    }

    static func describeFailure(action: String, response: HTTPResponse, keyID: String, attempts: Int) -> String {
        let metadata = response.json?["ResponseMetadata"]
        let error = metadata?["Error"]
        let code = error?["Code"]?.stringValue
        let message = error?["Message"]?.stringValue
        let requestID = metadata?["RequestId"]?.stringValue
        var text = "Volcengine KMS \(action) failed (HTTP \(response.status)"
        if let code { text += ", \(code)" }
        text += ")"
        if let message { text += ": \(message)" } else if code == nil { text += ": \(response.bodyExcerpt)" }
        if let requestID, !requestID.isEmpty { text += " [RequestId \(requestID)]" }
        switch code ?? "" {
        case let c where c.contains("Signature") || c.contains("AccessKey") || c.contains("Credential") || response.status == 401:
            text += "; check the access key and secret key"
        case let c where c.contains("NotFound") || c.contains("KeyID") || c.contains("InvalidKey"):
            text += "; check volcengine_key_id=\(keyID) and volcengine_region"
        case let c where c.contains("Forbidden") || c.contains("AccessDenied") || response.status == 403:
            text += "; the credentials lack permission for kms:\(action) on key \(keyID)"
        default: break
        }
        if response.status >= 500 && attempts > 1 { text += " after \(attempts) attempts" }
        return text
    }
}
