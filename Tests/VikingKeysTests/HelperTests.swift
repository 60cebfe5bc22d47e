import Testing
import VikingCrypto
@testable import VikingKeys

@Suite struct HelperTests {
    @Test func base64RoundTrips() throws {
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let text = Base64.encodeString(bytes)
            #expect(Base64.decode(text) == bytes)
            let secure = try #require(Array(text.utf8).withUnsafeBytes { Base64.decodeSecure($0) })
            #expect(secure.withUnsafeBytes { Array($0) } == bytes)
        }
        #expect(Base64.encodeString(Array("vault:v1:abc".utf8)) == "dmF1bHQ6djE6YWJj")
        #expect(Base64.decode("not base64!") == nil)
        #expect(Base64.decode("QUJD=") == nil)
        #expect(Base64.decode("QQ") == [0x41])
    }

    @Test func parsesJSON() throws {
        let v = try JSONValue.parse(#"{"a": [1, 2.5, -3e2], "b": {"c": null, "d": true}, "s": "x\"\u00e9\ud83d\ude00\n"}"#)
        #expect(v["b"]?["d"] == .bool(true))
        #expect(v["s"]?.stringValue == "x\"é😀\n")
        if case .array(let items)? = v["a"] { #expect(items.count == 3) } else { Issue.record("no array") }
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse("{\"a\": 1,}") }
        do {
            _ = try JSONValue.parse("{\n  \"a\": 1\n  \"b\": 2\n}")
            Issue.record("parsed bad JSON")
        } catch {
            #expect(error.line == 3)
        }
    }

    @Test func findsSecretFieldsWithoutStrings() {
        let body = Array(#"{"data":{"plaintext": "AAEC"},"x":1}"#.utf8)
        let range = body.withUnsafeBytes { jsonStringFieldRange($0, field: "plaintext") }
        #expect(range.map { String(decoding: body[$0], as: UTF8.self) } == "AAEC")
        #expect(body.withUnsafeBytes { jsonStringFieldRange($0, field: "missing") } == nil)
    }

    @Test func parsesEndpoints() {
        #expect(RemoteEndpoint(parsing: "http://127.0.0.1:8200") == RemoteEndpoint(tls: false, host: "127.0.0.1", port: 8200))
        #expect(RemoteEndpoint(parsing: "https://vault.example.com/") == RemoteEndpoint(tls: true, host: "vault.example.com", port: 443))
        #expect(RemoteEndpoint(parsing: "https://[::1]:8443/base")?.hostHeader == "[::1]:8443")
        #expect(RemoteEndpoint(parsing: "https://[::1]:8443/base")?.basePath == "/base")
        #expect(RemoteEndpoint(parsing: "kms.cn-beijing.volcengineapi.com", defaultScheme: "https")?.hostHeader == "kms.cn-beijing.volcengineapi.com")
        #expect(RemoteEndpoint(parsing: "vault:8200") == nil)
        #expect(RemoteEndpoint(parsing: "ftp://x") == nil)
        #expect(RemoteEndpoint(parsing: "http://x:99999") == nil)
    }

    @Test func tlsLibraryLoads() {
        #expect(TLS.library != nil, "libssl.so.3 could not be loaded")
    }
}
