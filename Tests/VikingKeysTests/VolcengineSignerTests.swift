import Foundation
import Testing
import VikingCrypto
@testable import VikingKeys
import VikingJSON

/// The signer against signatures computed by Volcengine's official Python SDK (`SignerV4`), committed in
/// Tests/vectors/volcengine/signer_vectors.json by Tests/vectors/volcengine/make_vectors.py.
@Suite struct VolcengineSignerTests {
    struct Vector: CustomTestStringConvertible, Sendable {
        let json: JSON
        var name: String { json["name"]?.stringValue ?? "?" }
        var testDescription: String { name }
    }

    static func loadVectors() -> [Vector] {
        let path = repositoryRoot() + "/Tests/vectors/volcengine/signer_vectors.json"
        guard let data = FileManager.default.contents(atPath: path), let doc = try? JSON.parse(Array(data)),
              case .array(let items)? = doc["vectors"] else { return [] }
        return items.map { Vector(json: $0) }
    }

    static let vectors = loadVectors()

    static func pairs(_ value: JSON?) -> [(String, String)] {
        guard case .array(let items)? = value else { return [] }
        return items.compactMap { item in
            guard case .array(let kv) = item, kv.count == 2, let k = kv[0].stringValue, let v = kv[1].stringValue else { return nil }
            return (k, v)
        }
    }

    @Test func vectorsArePresent() {
        #expect(Self.vectors.count >= 8, "the committed SDK vectors could not be read")
    }

    @Test(arguments: vectors)
    func matchesSDK(_ vector: Vector) throws {
        let v = vector.json
        let body = try #require(Base64.decode(v["body_base64"]?.stringValue ?? ""))
        let token = v["session_token"]?.stringValue ?? ""
        let credentials = VolcengineCredentials(accessKeyID: v["access_key_id"]!.stringValue!,
                                                secretAccessKey: SecureBytes(copying: Array(v["secret_access_key"]!.stringValue!.utf8)),
                                                sessionToken: token.isEmpty ? nil : token)
        let signer = VolcengineSigner(region: v["region"]!.stringValue!, service: v["service"]!.stringValue!)
        let signed = signer.sign(method: v["method"]!.stringValue!, path: v["path"]!.stringValue!, query: Self.pairs(v["query"]),
                                 headers: Self.pairs(v["headers"]), body: body, date: v["date"]!.stringValue!,
                                 credentials: credentials)
        let expected = v["expected"]!
        #expect(signed.authorization == expected["authorization"]?.stringValue)
        #expect(SHA256.hex(Array(signed.canonicalRequest.utf8)) == expected["canonical_request_sha256"]?.stringValue)
        let want = Self.pairs(expected["headers"]).sorted { $0.0 < $1.0 }
        let got = signed.headers.sorted { $0.0 < $1.0 }
        #expect(got.map { "\($0.0): \($0.1)" } == want.map { "\($0.0): \($0.1)" })
    }

    @Test func tamperingChangesTheSignature() throws {
        let v = try #require(Self.vectors.first).json
        let credentials = VolcengineCredentials(accessKeyID: "AK", secretAccessKey: SecureBytes(copying: Array("SK".utf8)))
        let signer = VolcengineSigner(region: "cn-beijing", service: "kms")
        let a = signer.sign(method: "POST", path: "/", query: Self.pairs(v["query"]), headers: Self.pairs(v["headers"]),
                            body: Array("{}".utf8), date: "20260102T030405Z", credentials: credentials)
        let b = signer.sign(method: "POST", path: "/", query: Self.pairs(v["query"]), headers: Self.pairs(v["headers"]),
                            body: Array("{ }".utf8), date: "20260102T030405Z", credentials: credentials)
        let c = VolcengineSigner(region: "cn-shanghai", service: "kms").sign(
            method: "POST", path: "/", query: Self.pairs(v["query"]), headers: Self.pairs(v["headers"]),
            body: Array("{}".utf8), date: "20260102T030405Z", credentials: credentials)
        #expect(a.signature != b.signature)
        #expect(a.signature != c.signature)
        #expect(a.signature.count == 64)
    }

    @Test func formatsDatesInUTC() {
        #expect(VolcengineSigner.formatDate(unixTime: 0) == "19700101T000000Z")
        #expect(VolcengineSigner.formatDate(unixTime: 1_709_164_800) == "20240229T000000Z")
        #expect(VolcengineSigner.formatDate(unixTime: 1_767_323_045) == "20260102T030405Z")
        #expect(VolcengineSigner.currentDate().count == 16)
    }

    @Test func normalizesLikePythonQuote() {
        #expect(VolcengineSigner.normalizePath("/a b/ü") == "/a%20b/%C3%BC")
        #expect(VolcengineSigner.normalizeQuery([("b", "x y"), ("a", "1/2"), ("a", "0")]) == "a=1%2F2&a=0&b=x%20y")
    }
}
