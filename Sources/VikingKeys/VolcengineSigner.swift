import VikingCrypto
#if canImport(Glibc)
import Glibc
#endif

/// Volcengine credentials: the access key ID, the secret access key (kept in a wiped buffer) and, for temporary
/// credentials, a session token.
public struct VolcengineCredentials: Sendable {
    public var accessKeyID: String
    public var secretAccessKey: SecureBytes
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: SecureBytes, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }
}

/// Volcengine's HMAC-SHA256 request signature, computed exactly as the official SDK's `SignerV4.sign` does
/// (`volcengine.auth.SignerV4` in the `volcengine` Python package), so that requests verify at the real service:
///
/// 1. Non-GET requests without a `Content-Type` get `application/x-www-form-urlencoded; charset=utf-8`.
/// 2. `X-Date` (`yyyyMMddTHHmmssZ`, UTC), `X-Security-Token` (session token, if any) and
///    `X-Content-Sha256` (hex SHA-256 of the body) are added.
/// 3. Signed headers: `Content-Type`, `Content-Md5`, `Host` and every header starting with `X-` (names matched
///    case-sensitively, as the SDK does), lower-cased and sorted; a `:80` or `:443` port is dropped from `host`.
/// 4. Canonical request: method, normalized path, normalized sorted query, `name:value\n` per signed header,
///    the signed header list, and the body hash, joined by newlines.
/// 5. String to sign: `HMAC-SHA256`, X-Date, the scope `{yyyyMMdd}/{region}/{service}/request` and the hex SHA-256
///    of the canonical request; the key is HMAC chained over the date, region, service and "request", starting
///    from the secret key.
/// 6. `Authorization: HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={list}, Signature={hex}`.
public struct VolcengineSigner: Sendable {
    public var region: String
    public var service: String

    public init(region: String, service: String) {
        self.region = region
        self.service = service
    }

    public struct Signed: Sendable {
        /// The request headers with the signature headers added (`X-Date`, `X-Content-Sha256`, `Authorization`, …).
        public var headers: [(String, String)]
        public var canonicalRequest: String
        public var stringToSign: String
        public var signature: String
        public var authorization: String

        public func header(_ name: String) -> String? { headers.last { $0.0 == name }?.1 }
    }

    /// Signs a request. Pure: the same inputs give the same headers, which is what the test vectors check.
    /// - Parameters:
    ///   - query: query parameters in any order (a name may repeat).
    ///   - headers: the headers the request will carry, including `Host`.
    ///   - date: the X-Date, `yyyyMMddTHHmmssZ`.
    public func sign(method: String, path: String, query: [(String, String)], headers: [(String, String)],
                     body: [UInt8], date: String, credentials: VolcengineCredentials) -> Signed {
        var headers = headers
        func set(_ name: String, _ value: String) {
            if let i = headers.firstIndex(where: { $0.0 == name }) { headers[i].1 = value } else { headers.append((name, value)) }
        }
        if method != "GET" && !headers.contains(where: { $0.0 == "Content-Type" }) {
            set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
        }
        set("X-Date", date)
        if let token = credentials.sessionToken, !token.isEmpty { set("X-Security-Token", token) }
        let bodyHash = SHA256.hex(body)
        set("X-Content-Sha256", bodyHash)

        // Lower-cased names; a later header wins over an earlier one of the same name, as in the SDK's dict.
        var signed: [String: String] = [:]
        for (name, value) in headers where ["Content-Type", "Content-Md5", "Host"].contains(name) || name.hasPrefix("X-") {
            signed[name.lowercased()] = value
        }
        if let host = signed["host"], host.contains(":") {
            let parts = host.split(separator: ":", omittingEmptySubsequences: false)
            if parts.count > 1 && (parts[1] == "80" || parts[1] == "443") { signed["host"] = String(parts[0]) }
        }
        let names = signed.keys.sorted(by: Self.codepointLess)
        let signedHeaders = names.joined(separator: ";")
        let headerBlock = names.map { "\($0):\(signed[$0]!)\n" }.joined()

        let canonical = [method, Self.normalizePath(path), Self.normalizeQuery(query), headerBlock, signedHeaders, bodyHash]
            .joined(separator: "\n")
        let day = String(date.prefix(8))
        let scope = "\(day)/\(region)/\(service)/request"
        let stringToSign = ["HMAC-SHA256", date, scope, SHA256.hex(Array(canonical.utf8))].joined(separator: "\n")

        var kDate = HMACSHA256.authenticate(key: credentials.secretAccessKey, message: Array(day.utf8))
        var kRegion = HMACSHA256.authenticate(key: kDate, message: Array(region.utf8))
        var kService = HMACSHA256.authenticate(key: kRegion, message: Array(service.utf8))
        var kSigning = HMACSHA256.authenticate(key: kService, message: Array("request".utf8))
        let signature = Hex.encode(HMACSHA256.authenticate(key: kSigning, message: Array(stringToSign.utf8)))
        wipe(&kDate); wipe(&kRegion); wipe(&kService); wipe(&kSigning)

        let authorization = "HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        set("Authorization", authorization)
        return Signed(headers: headers, canonicalRequest: canonical, stringToSign: stringToSign, signature: signature,
                      authorization: authorization)
    }

    /// `yyyyMMddTHHmmssZ` in UTC for a Unix time.
    public static func formatDate(unixTime: Int) -> String {
        var t = time_t(unixTime)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        func two(_ v: Int32) -> String { String(v).leftPadded(to: 2) }
        return "\(tm.tm_year + 1900)\(two(tm.tm_mon + 1))\(two(tm.tm_mday))T\(two(tm.tm_hour))\(two(tm.tm_min))\(two(tm.tm_sec))Z"
    }

    public static func currentDate() -> String { formatDate(unixTime: Int(time(nil))) }

    /// Python's `quote(s, safe)`: UTF-8 bytes, unreserved characters and `safe` kept, the rest `%XX`.
    static func quote(_ s: String, keepSlash: Bool) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
                 UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    /// The SDK's `norm_uri`: `quote(path)` keeping `/`.
    static func normalizePath(_ path: String) -> String { quote(path.isEmpty ? "/" : path, keepSlash: true) }

    /// The SDK's `norm_query`: names sorted by code point (a repeated name keeps its values' order), each name and
    /// value quoted with nothing but unreserved characters kept, joined by `&`.
    static func normalizeQuery(_ query: [(String, String)]) -> String {
        let order = query.indices.sorted { a, b in
            if query[a].0 == query[b].0 { return a < b }
            return codepointLess(query[a].0, query[b].0)
        }
        return order.map { "\(quote(query[$0].0, keepSlash: false))=\(quote(query[$0].1, keepSlash: false))" }
            .joined(separator: "&")
    }

    /// Python's string order: by Unicode code point.
    static func codepointLess(_ a: String, _ b: String) -> Bool {
        a.unicodeScalars.map(\.value).lexicographicallyPrecedes(b.unicodeScalars.map(\.value))
    }

    /// A query string as sent on the wire (same encoding as the canonical form, in the given order).
    static func queryString(_ query: [(String, String)]) -> String {
        query.map { "\(quote($0.0, keepSlash: false))=\(quote($0.1, keepSlash: false))" }.joined(separator: "&")
    }
}
