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

    @Test func tlsHandshakeWithAPlainServerFails() throws {
        // The plain HTTP stand-in waits for a request and never answers the ClientHello.
        let server = TestHTTPServer { _ in .json(200, "{}") }
        defer { server.stop() }
        let client = HTTPClient(endpoint: RemoteEndpoint(tls: true, host: "127.0.0.1", port: server.port), caFile: nil, timeout: 1)
        do {
            _ = try client.send(method: "GET", path: "/", headers: [])
            Issue.record("a TLS exchange with a plain HTTP server succeeded")
        } catch {
            #expect(error.message.contains("TLS handshake"), "\(error.message)")
        }
    }
}
