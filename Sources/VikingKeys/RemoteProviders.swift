import COpenSSL
import VikingCrypto
import VikingJSON
#if canImport(Glibc)
import Glibc
#endif

// What the remote key providers (Vault/OpenBao, Volcengine KMS) share: the option hooks `KeySource.parse` calls,
// small byte helpers that keep secrets out of Swift strings, and a minimal HTTP/1.1 client with TLS.
//
// Why an own HTTP client rather than FoundationNetworking's URLSession: on Linux, URLSession (libcurl underneath)
// offers no way to trust a private CA file. Its server-trust challenge never reaches the delegate, and libcurl
// ignores SSL_CERT_FILE, SSL_CERT_DIR and CURL_CA_BUNDLE because Debian builds it with a fixed CA bundle (the
// `URLSessionCertificateAuthorityInfoFile` variable is read on Android only). Production Vault runs TLS with a
// private CA (VAULT_CACERT), so the client below speaks HTTP/1.1 over a socket and OpenSSL's libssl directly,
// which also gives exact error causes (refused, timed out, certificate not trusted) and lets request and response
// buffers that carry key material be wiped.

// MARK: - Option hooks

extension KeySource {
    /// The Vault and Volcengine option names (see `VaultSettings` and `VolcengineSettings`).
    static let extraOptionNames: Set<String> = VaultSettings.optionNames.union(VolcengineSettings.optionNames)

    /// The Vault or Volcengine provider `kind` names (nil for another kind), from options over the settings of an
    /// ov.conf section when there is one.
    static func makeRemoteProvider(kind: String, options: [String: String], vaultConfig: VaultSettings.ConfigFields? = nil,
                                   volcengineConfig: VolcengineSettings.ConfigFields? = nil) throws(KeyError) -> (any RootKeyProvider)? {
        switch kind {
        case "vault":
            try rejectOptions(notFor: "vault", in: options, allowed: VaultSettings.optionNames)
            return VaultProvider(settings: try VaultSettings(options: options, config: vaultConfig))
        case "volcengine_kms":
            try rejectOptions(notFor: "volcengine_kms", in: options, allowed: VolcengineSettings.optionNames)
            return VolcengineKMSProvider(settings: try VolcengineSettings(options: options, config: volcengineConfig))
        default:
            return nil
        }
    }
}

/// Options that belong to another key provider are a mistake worth naming rather than ignoring.
func rejectOptions(notFor provider: String, in options: [String: String], allowed: Set<String>) throws(KeyError) {
    let foreign = KeySource.extraOptionNames.union(["root_key_file"]).subtracting(allowed)
    let given = options.keys.filter { foreign.contains($0) }.sorted()
    guard given.isEmpty else {
        throw .unsupportedConfig("option\(given.count > 1 ? "s" : "") \(given.joined(separator: ", ")) "
            + "do\(given.count > 1 ? "" : "es") not apply to key_provider=\(provider)")
    }
}

func providerFromOpenVikingConfig(path: String, overrides: [String: String]) throws(KeyError) -> any RootKeyProvider {
    try OpenVikingConfig.load(path: path).makeProvider(overrides: overrides)
}

// MARK: - Small shared helpers

/// Parses a timeout option in seconds (a positive number, at most one hour).
func parseTimeout(_ text: String?, option: String, default value: Double) throws(KeyError) -> Double {
    guard let text else { return value }
    guard let seconds = Double(text), seconds > 0, seconds <= 3600 else {
        throw .unsupportedConfig("\(option)=\(text) is not a number of seconds between 0 and 3600")
    }
    return seconds
}

/// Reads a small secret file (a token, credentials) into a secure buffer. Refuses files that group or others can
/// read, like the root key file: these grant access to the root key.
func readSecretFile(_ path: String, what: String, limit: Int = 64 * 1024) throws(KeyError) -> SecureBytes {
    func failure(_ reason: String) -> KeyError { .provider("\(what) \(path): \(reason)") }
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw failure(String(cString: strerror(errno))) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw failure(String(cString: strerror(errno))) }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw failure("not a regular file") }
    guard st.st_mode & 0o077 == 0 else {
        throw failure(octalMode(st.st_mode & 0o7777) + " lets group or others read it; run chmod 600 \(path)")
    }
    guard Int(st.st_size) <= limit else { throw failure("larger than \(limit) bytes") }
    let buffer = SecureBytes(count: Int(st.st_size))
    guard buffer.withUnsafeMutableBytes({ readFully(fd, into: $0) }) == buffer.count else { throw failure("short read") }
    return buffer
}

/// Reads from `fd` until `buffer` is full or the file ends, retrying on EINTR; returns the bytes read.
func readFully(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    var total = 0
    while total < buffer.count {
        let n = read(fd, buffer.baseAddress! + total, buffer.count - total)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        total += n
    }
    return total
}

/// A provider's failure with what it was doing in front.
func prefixed(_ error: KeyError, _ context: String) -> KeyError {
    switch error {
    case .provider(let m): return .provider("\(context): \(m)")
    case .invalidRootKey(let m): return .provider("\(context): \(m)")
    case .crypto(let e): return .provider("\(context): \(e)")
    default: return error
    }
}

/// The bytes of a secure buffer with surrounding whitespace removed (a trailing newline in a token file).
func trimmedSecure(_ bytes: SecureBytes) -> SecureBytes {
    bytes.withUnsafeBytes { p -> SecureBytes in
        var start = 0, end = p.count
        while start < end && isSpace(p[start]) { start += 1 }
        while end > start && isSpace(p[end - 1]) { end -= 1 }
        return SecureBytes(copying: UnsafeRawBufferPointer(rebasing: p[start..<end]))
    }
}

func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0a || b == 0x0d }

func secureFromString(_ text: String) -> SecureBytes { SecureBytes(copying: Array(text.utf8)) }

func readEnvSecure(_ name: String) -> SecureBytes? {
    guard let p = getenv(name) else { return nil }
    let count = strlen(p)
    guard count > 0 else { return nil }
    return trimmedSecure(SecureBytes(copying: UnsafeRawBufferPointer(start: p, count: count)))
}

// MARK: - Base64 without intermediate strings

enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// Standard base64 with padding.
    static func encode(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity((data.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= data.count {
            let v = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2])
            out.append(alphabet[Int(v >> 18 & 63)]); out.append(alphabet[Int(v >> 12 & 63)])
            out.append(alphabet[Int(v >> 6 & 63)]); out.append(alphabet[Int(v & 63)])
            i += 3
        }
        let rest = data.count - i
        if rest == 1 {
            let v = UInt32(data[i]) << 16
            out.append(alphabet[Int(v >> 18 & 63)]); out.append(alphabet[Int(v >> 12 & 63)])
            out.append(UInt8(ascii: "=")); out.append(UInt8(ascii: "="))
        } else if rest == 2 {
            let v = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8
            out.append(alphabet[Int(v >> 18 & 63)]); out.append(alphabet[Int(v >> 12 & 63)])
            out.append(alphabet[Int(v >> 6 & 63)]); out.append(UInt8(ascii: "="))
        }
        return out
    }

    static func encode(_ data: [UInt8]) -> [UInt8] { data.withUnsafeBytes { encode($0) } }
    static func encodeString(_ data: [UInt8]) -> String { String(decoding: encode(data), as: UTF8.self) }

    private static func value(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return UInt32(c - UInt8(ascii: "A"))
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return UInt32(c - UInt8(ascii: "a") + 26)
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0") + 52)
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }

    /// Decodes standard base64 (padding optional) into `out`, which must hold `decodedLength` bytes.
    /// Returns false on any invalid character.
    private static func decode(_ text: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Bool {
        var acc: UInt32 = 0, bits = 0, o = 0
        for c in text {
            if c == UInt8(ascii: "=") { break }
            guard let v = value(c) else { return false }
            acc = acc << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                guard o < out.count else { return false }
                out[o] = UInt8(truncatingIfNeeded: acc >> UInt32(bits))
                o += 1
            }
        }
        acc = 0
        return o == out.count
    }

    /// Length of the decoded bytes, or nil when the text cannot be base64.
    private static func decodedLength(_ text: UnsafeRawBufferPointer) -> Int? {
        var n = text.count
        while n > 0 && text[n - 1] == UInt8(ascii: "=") { n -= 1 }
        guard text.count - n <= 2 else { return nil }
        if text.count != n && text.count % 4 != 0 { return nil }
        guard n % 4 != 1 else { return nil }
        return n / 4 * 3 + (n % 4 == 0 ? 0 : n % 4 - 1)
    }

    static func decode(_ text: UnsafeRawBufferPointer) -> [UInt8]? {
        guard let count = decodedLength(text) else { return nil }
        var out = [UInt8](repeating: 0, count: count)
        let ok = out.withUnsafeMutableBytes { decode(text, into: $0) }
        return ok ? out : nil
    }

    static func decode(_ text: String) -> [UInt8]? {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { decode($0) }
    }

    /// Decodes straight into a secure buffer (for key material).
    static func decodeSecure(_ text: UnsafeRawBufferPointer) -> SecureBytes? {
        guard let count = decodedLength(text) else { return nil }
        let out = SecureBytes(count: count)
        let ok = out.withUnsafeMutableBytes { decode(text, into: $0) }
        return ok ? out : nil
    }
}

// MARK: - Endpoints

/// `http(s)://host[:port][/base]`, parsed without Foundation.
public struct RemoteEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var tls: Bool
    public var host: String
    public var port: Int
    /// Path prefix without a trailing slash ("" for none).
    public var basePath: String

    public init(tls: Bool, host: String, port: Int, basePath: String = "") {
        self.tls = tls; self.host = host; self.port = port; self.basePath = basePath
    }

    /// Parses a URL; `defaultScheme` applies to a bare `host[:port]`.
    public init?(parsing text: String, defaultScheme: String? = nil) {
        var rest = Substring(text.trimmingSpaces())
        let parts = rest.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
        if parts.count == 2 {
            let scheme = parts[0].lowercased()
            guard scheme == "http" || scheme == "https" else { return nil }
            tls = scheme == "https"
            rest = parts[1]
        } else {
            guard let defaultScheme else { return nil }
            tls = defaultScheme == "https"
        }
        var authority = rest
        basePath = ""
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            basePath = String(rest[slash...])
            while basePath.hasSuffix("/") { basePath.removeLast() }
        }
        guard !authority.contains("@"), !authority.isEmpty, !basePath.contains("?"), !basePath.contains("#") else { return nil }
        var portText: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            portText = authority[authority.index(after: colon)...]
        } else {
            host = String(authority)
        }
        guard !host.isEmpty else { return nil }
        if let portText {
            guard let p = Int(portText), p > 0, p < 65536 else { return nil }
            port = p
        } else {
            port = tls ? 443 : 80
        }
    }

    var isDefaultPort: Bool { port == (tls ? 443 : 80) }

    /// The Host header value: the port only when it is not the scheme's default.
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return isDefaultPort ? h : "\(h):\(port)"
    }

    public var description: String { "\(tls ? "https" : "http")://\(hostHeader)\(basePath)" }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s.removeLast() }
        return String(s)
    }
}

/// Percent-encodes a URL path, keeping unreserved characters and `/`.
func percentEncodePath(_ path: String) -> String {
    var out = ""
    for b in path.utf8 {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
             UInt8(ascii: "~"), UInt8(ascii: "/"):
            out.unicodeScalars.append(Unicode.Scalar(b))
        default:
            out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
        }
    }
    return out
}

extension String {
    func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}

// MARK: - HTTP client

/// Why a request got no HTTP response.
enum HTTPFailure: Error, Equatable {
    /// Name resolution failed.
    case resolve(String)
    /// Nothing listens at the address (connection refused, host or network unreachable).
    case unreachable(String)
    /// The server did not answer in time.
    case timeout(String)
    /// TLS could not be set up (untrusted certificate, wrong host name).
    case tls(String)
    /// The connection broke or the answer was not HTTP.
    case protocolError(String)

    var message: String {
        switch self {
        case .resolve(let m), .unreachable(let m), .timeout(let m), .tls(let m), .protocolError(let m): return m
        }
    }

    /// What a provider reports for this failure of its `attempt`-th try at `service`: `hint` says what to check
    /// when nothing answers, `timeoutOption` names the option that set `timeout`.
    func providerMessage(service: String, attempt: Int, hint: String, timeoutOption: String, timeout: Double) -> String {
        // Only the last attempt's failure is reported, so "tried" appears when there were several.
        let tried = attempt > 1 ? " (tried \(attempt) times)" : ""
        switch self {
        case .unreachable(let m): return "\(service) is unreachable: \(m)\(tried); \(hint)"
        case .timeout(let m): return "\(service) did not answer in time: \(m) (\(timeoutOption)=\(formatSeconds(timeout)) s)\(tried)"
        case .resolve(let m): return "\(service) is unreachable: \(m)"
        case .tls(let m): return "TLS to \(service) failed: \(m)"
        case .protocolError(let m): return "talking to \(service) failed: \(m)\(tried)"
        }
    }

    /// Failures worth another attempt: the server may come back.
    var isTransient: Bool {
        switch self {
        case .unreachable, .timeout, .protocolError: return true
        case .resolve, .tls: return false
        }
    }
}

/// A response; the body is wiped when the response goes away, since some carry key material.
final class HTTPResponse {
    let status: Int
    let headers: [(String, String)]
    var body: [UInt8]

    init(status: Int, headers: [(String, String)], body: [UInt8]) {
        self.status = status; self.headers = headers; self.body = body
    }

    deinit { wipe(&body) }

    func header(_ name: String) -> String? {
        headers.last { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// The body as JSON, for non-secret responses.
    var json: JSON? { try? JSON.parse(body, allowingByteOrderMark: true) }

    /// A short printable excerpt of a non-secret body, for error messages.
    var bodyExcerpt: String {
        let text = String(decoding: body.prefix(300), as: UTF8.self)
        return text.map { $0.isNewline ? " " : $0 }.reduce(into: "") { $0.append($1) }.trimmingSpaces()
    }
}

/// A header whose value is secret (a token): written into the request buffer, which is wiped after sending.
struct SecretHeader {
    let name: String
    let value: SecureBytes
}

/// HTTP/1.1 over a fresh connection per request (`Connection: close`), plain or TLS.
struct HTTPClient: Sendable {
    let endpoint: RemoteEndpoint
    /// PEM file (or directory of hashed certificates) to trust instead of the system store.
    let caFile: String?
    /// Seconds for one attempt: connect, send and receive.
    let timeout: Double
    let maxResponseBytes = 1 << 20

    func send(method: String, path: String, headers: [(String, String)], secretHeaders: [SecretHeader] = [],
              body: [UInt8] = []) throws(HTTPFailure) -> HTTPResponse {
        // OpenSSL writes with write(2): a server that hangs up would raise SIGPIPE, which kills a process that does
        // not ignore it. Block it on this thread for the exchange and drop one raised meanwhile.
        var pipe = sigset_t(), previous = sigset_t()
        sigemptyset(&pipe)
        sigaddset(&pipe, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipe, &previous)
        defer {
            var pending = sigset_t()
            sigpending(&pending)
            if sigismember(&pending, SIGPIPE) == 1 && sigismember(&previous, SIGPIPE) == 0 {
                var zero = timespec()
                _ = sigtimedwait(&pipe, nil, &zero)
            }
            pthread_sigmask(SIG_SETMASK, &previous, nil)
        }
        return try exchange(method: method, path: path, headers: headers, secretHeaders: secretHeaders, body: body)
    }

    private func exchange(method: String, path: String, headers: [(String, String)], secretHeaders: [SecretHeader],
                          body: [UInt8]) throws(HTTPFailure) -> HTTPResponse {
        let deadline = monotonicSeconds() + timeout
        var request = Array("\(method) \(endpoint.basePath)\(path) HTTP/1.1\r\n".utf8)
        defer { wipe(&request) }
        request.reserveCapacity(8192 + body.count)
        var names = Set<String>()
        for (name, value) in headers {
            names.insert(name.lowercased())
            request += Array("\(name): \(value)\r\n".utf8)
        }
        if !names.contains("host") { request += Array("Host: \(endpoint.hostHeader)\r\n".utf8) }
        for h in secretHeaders {
            request += Array("\(h.name): ".utf8)
            h.value.withUnsafeBytes { request.append(contentsOf: $0) }
            request += [0x0d, 0x0a]
        }
        if !body.isEmpty || method == "POST" || method == "PUT" { request += Array("Content-Length: \(body.count)\r\n".utf8) }
        request += Array("Connection: close\r\n\r\n".utf8)
        request += body

        let connection = try Connection.open(endpoint: endpoint, caFile: caFile, deadline: deadline)
        defer { connection.close() }
        try connection.writeAll(request, deadline: deadline)
        return try readResponse(connection, deadline: deadline)
    }

    private func readResponse(_ connection: Connection, deadline: Double) throws(HTTPFailure) -> HTTPResponse {
        var raw = [UInt8]()
        raw.reserveCapacity(maxResponseBytes)  // no reallocation: no stray copies of a secret body
        defer { wipe(&raw) }
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        defer { wipe(&chunk) }
        while true {
            if let response = try parseComplete(raw, eof: false) { return response }
            let n = try connection.read(into: &chunk, deadline: deadline)
            if n == 0 {
                if let response = try parseComplete(raw, eof: true) { return response }
                throw .protocolError(raw.isEmpty ? "the server at \(endpoint) closed the connection without answering"
                                                 : "the server at \(endpoint) closed the connection mid-response")
            }
            guard raw.count + n <= maxResponseBytes else { throw .protocolError("the response from \(endpoint) is larger than 1 MiB") }
            raw.append(contentsOf: chunk[0..<n])
        }
    }

    /// The response if `raw` holds all of it.
    private func parseComplete(_ raw: [UInt8], eof: Bool) throws(HTTPFailure) -> HTTPResponse? {
        guard let headerEnd = find(raw, [0x0d, 0x0a, 0x0d, 0x0a], from: 0) else { return nil }
        let head = String(decoding: raw[0..<headerEnd], as: UTF8.self)
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw .protocolError("the server at \(endpoint) did not answer with HTTP (got \"\(statusLine.prefix(60))\"); is it the right address and scheme?")
        }
        var headers: [(String, String)] = []
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingSpaces()))
        }
        func header(_ n: String) -> String? { headers.last { $0.0.lowercased() == n }?.1 }
        let bodyStart = headerEnd + 4
        if status / 100 == 1 {
            // An interim response (100 Continue): skip it.
            return try parseComplete(Array(raw[bodyStart...]), eof: eof)
        }
        if header("transfer-encoding")?.lowercased().contains("chunked") == true {
            guard let body = try dechunk(raw, from: bodyStart) else {
                if eof { throw .protocolError("the server at \(endpoint) closed the connection mid-response") }
                return nil
            }
            return HTTPResponse(status: status, headers: headers, body: body)
        }
        if let lengthText = header("content-length") {
            guard let length = Int(lengthText), length >= 0 else { throw .protocolError("bad Content-Length from \(endpoint)") }
            guard raw.count - bodyStart >= length else { return nil }
            return HTTPResponse(status: status, headers: headers, body: Array(raw[bodyStart..<bodyStart + length]))
        }
        if status == 204 || status == 304 { return HTTPResponse(status: status, headers: headers, body: []) }
        guard eof else { return nil }
        return HTTPResponse(status: status, headers: headers, body: Array(raw[bodyStart...]))
    }

    private func dechunk(_ raw: [UInt8], from start: Int) throws(HTTPFailure) -> [UInt8]? {
        var body = [UInt8]()
        body.reserveCapacity(raw.count)  // no reallocation: no stray copies of a secret body
        var i = start
        while true {
            guard let lineEnd = find(raw, [0x0d, 0x0a], from: i) else { wipe(&body); return nil }
            let sizeText = String(decoding: raw[i..<lineEnd], as: UTF8.self).split(separator: ";").first.map(String.init) ?? ""
            guard let size = Int(sizeText.trimmingSpaces(), radix: 16), size >= 0 else {
                wipe(&body)
                throw .protocolError("bad chunked encoding from \(endpoint)")
            }
            i = lineEnd + 2
            if size == 0 { return body }
            guard raw.count >= i + size + 2 else { wipe(&body); return nil }
            body.append(contentsOf: raw[i..<i + size])
            i += size + 2
        }
    }

    private func find(_ haystack: [UInt8], _ needle: [UInt8], from: Int) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var i = from
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0] && Array(haystack[i..<i + needle.count]) == needle { return i }
            i += 1
        }
        return nil
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Runs `body` up to `attempts` times, sleeping 0.5 s, 1 s, 2 s… between tries while it asks for a retry.
func withRetries<T>(attempts: Int, _ body: (_ attempt: Int) throws(KeyError) -> RetryStep<T>) throws(KeyError) -> T {
    var delay = 0.5
    var attempt = 1
    while true {
        switch try body(attempt) {
        case .done(let value): return value
        case .retry(let error):
            guard attempt < attempts else { throw error }
            usleep(useconds_t(delay * 1_000_000))
            delay *= 2
            attempt += 1
        }
    }
}

enum RetryStep<T> {
    case done(T)
    case retry(KeyError)
}

// MARK: - Sockets and TLS

/// One TCP connection, plain or wrapped in TLS.
final class Connection {
    private let fd: Int32
    private let ssl: OpaquePointer?
    private let tlsContext: OpaquePointer?
    private let endpoint: RemoteEndpoint

    private init(fd: Int32, ssl: OpaquePointer?, tlsContext: OpaquePointer?, endpoint: RemoteEndpoint) {
        self.fd = fd; self.ssl = ssl; self.tlsContext = tlsContext; self.endpoint = endpoint
    }

    static func open(endpoint: RemoteEndpoint, caFile: String?, deadline: Double) throws(HTTPFailure) -> Connection {
        let fd = try connectTCP(endpoint: endpoint, deadline: deadline)
        guard endpoint.tls else { return Connection(fd: fd, ssl: nil, tlsContext: nil, endpoint: endpoint) }
        do {
            let (ctx, ssl) = try TLS.handshake(fd: fd, endpoint: endpoint, caFile: caFile, deadline: deadline)
            return Connection(fd: fd, ssl: ssl, tlsContext: ctx, endpoint: endpoint)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    func close() {
        // No close_notify: the exchange is complete, and the server closes its side anyway.
        if let ssl { SSL_free(ssl) }
        if let tlsContext { SSL_CTX_free(tlsContext) }
        Glibc.close(fd)
    }

    func writeAll(_ data: [UInt8], deadline: Double) throws(HTTPFailure) {
        var sent = 0
        while sent < data.count {
            try setTimeouts(fd: fd, deadline: deadline, endpoint: endpoint)
            let n: Int = data.withUnsafeBytes { p in
                if let ssl {
                    return Int(SSL_write(ssl, p.baseAddress! + sent, Int32(min(p.count - sent, Int(Int32.max)))))
                }
                return Glibc.send(fd, p.baseAddress! + sent, p.count - sent, Int32(MSG_NOSIGNAL))
            }
            if n > 0 { sent += n; continue }
            let err = errno
            if ssl == nil && err == EINTR { continue }
            if err == EAGAIN || err == EWOULDBLOCK { throw .timeout("timed out sending to \(endpoint)") }
            throw .protocolError("sending to \(endpoint) failed: \(String(cString: strerror(err)))")
        }
    }

    /// Reads what is available; 0 at the end of the stream.
    func read(into buffer: inout [UInt8], deadline: Double) throws(HTTPFailure) -> Int {
        while true {
            try setTimeouts(fd: fd, deadline: deadline, endpoint: endpoint)
            if let ssl {
                let n = buffer.withUnsafeMutableBytes { p in SSL_read(ssl, p.baseAddress!, Int32(p.count)) }
                if n > 0 { return Int(n) }
                let err = errno
                let code = SSL_get_error(ssl, n)
                switch code {
                case SSL_ERROR_ZERO_RETURN: return 0
                case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                    throw .timeout("timed out waiting for an answer from \(endpoint)")
                case SSL_ERROR_SYSCALL:
                    if err == EAGAIN || err == EWOULDBLOCK { throw .timeout("timed out waiting for an answer from \(endpoint)") }
                    if err == 0 || n == 0 { return 0 }
                    throw .protocolError("reading from \(endpoint) failed: \(String(cString: strerror(err)))")
                default:
                    // OpenSSL 3 reports a peer closing without close_notify as an error; treat it as the end.
                    let detail = TLS.lastError()
                    if detail.contains("unexpected eof") { return 0 }
                    throw .protocolError("TLS read from \(endpoint) failed: \(detail)")
                }
            }
            let n = buffer.withUnsafeMutableBytes { p in Glibc.recv(fd, p.baseAddress!, p.count, 0) }
            if n >= 0 { return n }
            let err = errno
            if err == EINTR { continue }
            if err == EAGAIN || err == EWOULDBLOCK { throw .timeout("timed out waiting for an answer from \(endpoint)") }
            if err == ECONNRESET { throw .protocolError("the server at \(endpoint) reset the connection") }
            throw .protocolError("reading from \(endpoint) failed: \(String(cString: strerror(err)))")
        }
    }
}

private func setTimeouts(fd: Int32, deadline: Double, endpoint: RemoteEndpoint) throws(HTTPFailure) {
    let remaining = deadline - monotonicSeconds()
    guard remaining > 0 else { throw .timeout("timed out waiting for an answer from \(endpoint)") }
    var tv = timeval(tv_sec: Int(remaining), tv_usec: Int((remaining - Double(Int(remaining))) * 1_000_000))
    if tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
}

private func connectTCP(endpoint: RemoteEndpoint, deadline: Double) throws(HTTPFailure) -> Int32 {
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var list: UnsafeMutablePointer<addrinfo>? = nil
    let rc = getaddrinfo(endpoint.host, String(endpoint.port), &hints, &list)
    guard rc == 0, let first = list else {
        throw .resolve("cannot resolve the host name \(endpoint.host) of \(endpoint): \(String(cString: gai_strerror(rc)))")
    }
    defer { freeaddrinfo(list) }
    var lastError: HTTPFailure = .unreachable("cannot connect to \(endpoint)")
    var cursor: UnsafeMutablePointer<addrinfo>? = first
    while let ai = cursor {
        cursor = ai.pointee.ai_next
        let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { continue }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        var result = connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen)
        var err = errno
        if result != 0 && err == EINPROGRESS {
            let remaining = deadline - monotonicSeconds()
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ready = remaining > 0 ? poll(&pfd, 1, Int32(max(1, remaining * 1000))) : 0
            if ready <= 0 {
                Glibc.close(fd)
                lastError = .timeout("timed out after \(formatSeconds(remaining > 0 ? remaining : 0)) s connecting to \(endpoint)")
                continue
            }
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
            result = soError == 0 ? 0 : -1
            err = soError
        }
        if result != 0 {
            Glibc.close(fd)
            lastError = .unreachable("cannot connect to \(endpoint): \(String(cString: strerror(err)))")
            continue
        }
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }
    throw lastError
}

func formatSeconds(_ s: Double) -> String {
    s == s.rounded() ? String(Int(s)) : String(Double(Int(s * 10)) / 10)
}

/// TLS client connections over OpenSSL's libssl.
enum TLS {
    static func lastError() -> String {
        var text = ""
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            let s = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            // "error:0A000086:SSL routines::certificate verify failed" -> the reason after the last colon.
            let reason = s.split(separator: ":").last.map(String.init) ?? s
            if text.isEmpty { text = reason }
        }
        return text.isEmpty ? "unknown error" : text
    }

    static func handshake(fd: Int32, endpoint: RemoteEndpoint, caFile: String?, deadline: Double)
        throws(HTTPFailure) -> (OpaquePointer, OpaquePointer) {
        _ = ERR_get_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw .tls("TLS setup failed: \(lastError())") }
        var ok = false
        defer { if !ok { SSL_CTX_free(ctx) } }
        // SSL_CTX_set_min_proto_version, a macro over SSL_CTX_ctrl.
        _ = SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, Int(TLS1_2_VERSION), nil)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        if let caFile {
            var st = stat()
            guard stat(caFile, &st) == 0 else {
                throw .tls("cannot read the CA certificate \(caFile): \(String(cString: strerror(errno)))")
            }
            let isDir = (st.st_mode & S_IFMT) == S_IFDIR
            let loaded = isDir ? SSL_CTX_load_verify_locations(ctx, nil, caFile)
                               : SSL_CTX_load_verify_locations(ctx, caFile, nil)
            guard loaded == 1 else { throw .tls("cannot load the CA certificate \(caFile): \(lastError())") }
        } else {
            _ = SSL_CTX_set_default_verify_paths(ctx)
        }
        guard let ssl = SSL_new(ctx) else { throw .tls("TLS setup failed: \(lastError())") }
        defer { if !ok { SSL_free(ssl) } }
        _ = SSL_set_fd(ssl, fd)
        let isIP = endpoint.host.contains(":") || endpoint.host.allSatisfy { $0.isNumber || $0 == "." }
        if !isIP {
            // SSL_set_tlsext_host_name, a macro over SSL_ctrl.
            _ = endpoint.host.withCString {
                SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name), UnsafeMutableRawPointer(mutating: $0))
            }
        }
        // Checks the certificate's DNS name, or its IP address when the host is one.
        guard SSL_set1_host(ssl, endpoint.host) == 1 else { throw .tls("TLS setup failed for host \(endpoint.host)") }
        try setTimeouts(fd: fd, deadline: deadline, endpoint: endpoint)
        let rc = SSL_connect(ssl)
        if rc != 1 {
            let err = errno
            let code = SSL_get_error(ssl, rc)
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK {
                let reason = X509_verify_cert_error_string(verify).map { String(cString: $0) } ?? "code \(verify)"
                let hint = caFile == nil ? " (give the CA that signed it with vault_cacert=PATH or VAULT_CACERT)"
                                         : " (is \(caFile!) the CA that signed it?)"
                throw .tls("the TLS certificate of \(endpoint) is not trusted: \(reason)\(hint)")
            }
            let detail = lastError()
            if detail == "unknown error" && (err == EAGAIN || err == EWOULDBLOCK) {
                throw .timeout("timed out in the TLS handshake with \(endpoint) (does the server speak TLS?)")
            }
            if code == SSL_ERROR_SYSCALL && detail == "unknown error" && err == 0 {
                throw .tls("TLS handshake with \(endpoint) failed: the server closed the connection (does it speak TLS?)")
            }
            if detail.contains("wrong version number") || detail.contains("packet length too long") {
                throw .tls("TLS handshake with \(endpoint) failed: \(detail) (does the server speak plain http?)")
            }
            throw .tls("TLS handshake with \(endpoint) failed: \(detail == "unknown error" && err != 0 ? String(cString: strerror(err)) : detail)")
        }
        ok = true
        return (ctx, ssl)
    }
}
